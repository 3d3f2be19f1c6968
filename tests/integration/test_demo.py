"""``fedge demo`` end to end on small settings, as a user runs it: a real DP Flower simulation (2 clients, 1 round),
real export (edge.export), the embedded broker and the agents as their own processes (both runtimes), a staged
rollout, telemetry. Then Ctrl-C in the middle of a second demo: every process it started is gone."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

pytest.importorskip("amqtt")
pytest.importorskip("ai_edge_litert")
pytest.importorskip("litert_torch")

SMALL = ["--num-clients", "2", "--rounds", "1", "--devices", "3", "--interval", "0.5", "--latency-runs", "5"]


def fedge(*args: str) -> list[str]:
    return [sys.executable, "-m", "simulations.cli", *args]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped) counts as gone
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def wait_gone(pids: list[int], timeout: float = 15.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    env = {**os.environ, "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "COLUMNS": "120"}
    out = subprocess.run(
        fedge("demo", *SMALL, "--telemetry-seconds", "2", "--runs-dir", str(runs)),
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (run_dir,) = [p for p in runs.iterdir() if p.name.startswith("demo-")]
    return run_dir, out.stdout


def test_demo_trains_exports_delivers_and_reports(demo_run):
    run_dir, stdout = demo_run
    for stage in range(1, 7):
        assert f"[{stage}/6]" in stdout
    assert "all 3 devices run the int8 model" in stdout
    summary = json.loads((run_dir / "edge" / "demo.json").read_text())
    assert sorted(set(summary["devices"].values())) == ["onnx", "tflite"]
    assert sorted(summary["on_int8"]) == ["dev-01", "dev-02", "dev-03"]
    fp32, int8 = summary["rollouts"]
    assert fp32["status"] == int8["status"] == "completed"
    assert len(int8["canaries"]) == 1 and int8["baseline"]["reports"] >= 2
    assert summary["telemetry"]["lost"] == 0 and summary["telemetry"]["received"] > 0
    # the training run's record, the artifacts and the devices' stores, all under runs/<run-id>/
    assert (run_dir / "metrics.json").is_file() and (run_dir / "model.pt").is_file()
    for name in ("fp32.onnx", "int8.onnx", "fp32.tflite", "int8.tflite", "int8.onnx.json"):
        assert (run_dir / "artifacts" / name).is_file()
    for device in summary["devices"]:
        state = json.loads((run_dir / "edge" / "devices" / device / "state.json").read_text())
        assert (state["current"]["version"], state["previous"]["version"]) == (2, 1)
    fleet = json.loads((run_dir / "edge" / "fleet.json").read_text())
    assert all(d["accuracy"] is not None and d["latency_ms_p50"] > 0 for d in fleet["devices"])
    assert wait_gone(list(summary["pids"].values())) == []


def test_ctrl_c_stops_every_process_the_demo_started(demo_run):
    run_dir, _ = demo_run
    env = {**os.environ, "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    proc = subprocess.Popen(
        fedge("demo", "--from-run", str(run_dir), *SMALL, "--telemetry-seconds", "60"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    seen: list[str] = []
    try:
        for line in proc.stdout:  # until the telemetry stage: broker, collector and agents all running
            seen.append(line)
            if "[6/6]" in line:
                break
        pids = [int(p) for p in re.findall(r"\(pid (\d+)", "".join(seen))]
        assert len(pids) == 4, "".join(seen)  # the broker and 3 agents
        assert all(alive(p) for p in pids)
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
        rest = proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, "".join(seen) + rest
    assert "interrupted: stopping the broker and 3 agents" in rest
    assert wait_gone(pids) == []

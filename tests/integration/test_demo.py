"""``fedge demo`` end to end on small settings, as a user runs it: a real DP Flower simulation (2 clients, 1 round)
and its non-private reference, real export (edge.export), the embedded broker and the agents as their own processes
(both runtimes), a staged rollout, telemetry, and the figures it prints, read back from its own run record. Then
Ctrl-C in the middle of a second demo: every process it started is gone."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
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
    (run_dir,) = [p for p in runs.iterdir() if p.name.startswith("demo-") and not p.name.endswith("-no-dp")]
    return run_dir, out.stdout, out.stderr


def test_demo_trains_exports_delivers_and_reports(demo_run):
    run_dir, stdout, _ = demo_run
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


def _printed(pattern: str, stdout: str) -> tuple[str, ...]:
    found = re.search(pattern, stdout)
    assert found, f"no line matching {pattern!r} in:\n{stdout[-3000:]}"
    return found.groups()


def test_accuracy_and_privacy_printed_are_the_run_records(demo_run):
    run_dir, stdout, _ = demo_run
    rounds = json.loads((run_dir / "metrics.json").read_text())["rounds"]
    privacy = json.loads((run_dir / "privacy.json").read_text())
    accuracy, epsilon, delta = _printed(r"DP model: accuracy (\d\.\d{3}) at ε = (\d+\.\d{3}), δ = (\S+) ", stdout)
    assert accuracy == f"{rounds[-1]['central-accuracy']:.3f}"
    assert epsilon == f"{privacy['max-epsilon']:.3f}" and float(delta) == privacy["delta"]
    assert 0 < privacy["max-epsilon"] <= privacy["target-epsilon"]
    # the non-private reference ran in this demo: its own run record, next to the DP run's, with DP off
    reference = run_dir.parent / f"{run_dir.name}-no-dp"
    (reference_accuracy,) = _printed(r"non-private reference: accuracy (\d\.\d{3}) ", stdout)
    reference_rounds = json.loads((reference / "metrics.json").read_text())["rounds"]
    assert reference_accuracy == f"{reference_rounds[-1]['central-accuracy']:.3f}"
    assert len(reference_rounds) == len(rounds)
    reference_config = json.loads((reference / "config.json").read_text())
    assert reference_config["dp"] is False and json.loads((reference / "privacy.json").read_text())["enabled"] is False
    assert reference_config["model"] == json.loads((run_dir / "config.json").read_text())["model"]


def test_size_and_latency_printed_are_the_artifacts_descriptions(demo_run):
    run_dir, stdout, _ = demo_run
    for fmt in ("onnx", "tflite"):
        fp32, int8 = (json.loads((run_dir / "artifacts" / f"{p}.{fmt}.json").read_text()) for p in ("fp32", "int8"))
        size, int8_kib, fp32_kib, latency, int8_ms, fp32_ms = _printed(
            rf"{fmt} int8/fp32: size (\d+\.\d{{3}})x \((\d+\.\d) / (\d+\.\d) KiB\), "
            rf"latency (\d+\.\d{{3}})x \((\d+\.\d{{4}}) / (\d+\.\d{{4}}) ms",
            stdout,
        )
        assert size == f"{int8['size-bytes'] / fp32['size-bytes']:.3f}"
        assert (int8_kib, fp32_kib) == (f"{int8['size-bytes'] / 1024:.1f}", f"{fp32['size-bytes'] / 1024:.1f}")
        assert latency == f"{int8['metrics']['latency-ms'] / fp32['metrics']['latency-ms']:.3f}"
        assert (int8_ms, fp32_ms) == (f"{int8['metrics']['latency-ms']:.4f}", f"{fp32['metrics']['latency-ms']:.4f}")
        # the model is mostly two large fully connected layers: int8 stores them in about a quarter of the bytes
        assert int8["size-bytes"] <= 0.35 * fp32["size-bytes"]


def test_device_accuracy_rests_on_every_evaluation_sample_and_the_verdict_on_its_reports(demo_run):
    run_dir, stdout, _ = demo_run
    summary = json.loads((run_dir / "edge" / "demo.json").read_text())
    with np.load(run_dir / "edge" / "samples" / "held-out.npz") as samples:
        held_out = len(samples["y"])
    (per_report,) = _printed(r"every report window runs all (\d+) evaluation samples", stdout)
    assert int(per_report) == held_out == summary["quality"]["devices"]["samples-per-report"]
    assert held_out == json.loads((run_dir / "artifacts" / "int8.onnx.json").read_text())["metrics"]["test-samples"]
    fleet = {d["device_id"]: d for d in json.loads((run_dir / "edge" / "fleet.json").read_text())["devices"]}
    for device, row in fleet.items():
        accuracy, error, samples_seen = _printed(
            rf"{device} \(\w+, v2\): accuracy (\d\.\d{{3}}) ± (\d\.\d{{3}}) \(standard error, (\d+) samples\)", stdout
        )
        assert row["inferences"] == held_out == int(samples_seen)
        assert accuracy == f"{row['accuracy']:.3f}"
        assert error == f"{math.sqrt(row['accuracy'] * (1 - row['accuracy']) / held_out):.3f}"
    int8 = summary["rollouts"][1]
    verdict, reports, inferences, baseline_reports, baseline_inferences = _printed(
        r"canary verdict \([\w, -]+\): (.+)\n\s+on (\d+) reports \((\d+) labelled inferences\) against (\d+) reports "
        r"\((\d+)\)",
        stdout,
    )
    assert verdict == int8["verdict"]
    assert (int(reports), int(inferences)) == (int8["canary_stats"]["reports"], int8["canary_stats"]["labelled"])
    assert (int(baseline_reports), int(baseline_inferences)) == (
        int8["baseline"]["reports"],
        int8["baseline"]["labelled"],
    )
    assert int(inferences) >= 2 * held_out  # every canary report covers the whole evaluation half


def test_third_party_log_noise_stays_out_of_the_demo_output(demo_run):
    _, stdout, stderr = demo_run
    for noise in ("absl::InitializeLog", "oneDNN custom operations", "XNNPACK delegate"):
        assert noise not in stdout + stderr


def test_ctrl_c_stops_every_process_the_demo_started(demo_run):
    run_dir, _, _ = demo_run
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

"""A federation that outgrows one machine: `fedge simulate --ray-address` on a real two-node Ray cluster.

A Ray head and a second Ray node start as separate processes on loopback (``ray start --block``, 1 CPU each, each
with its own temp dir, each in its own process group so that stopping them touches no other Ray on this machine).
Flower's Ray backend then sizes its actor pool from the cluster (one actor per node) and the run record counts
which Ray node each trained reply came from (``trained-on``): clients must have trained on both nodes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from shared_models.run_dir import RunDir

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).with_name("ray")
# One helper run: connect to the cluster, wait (with a deadline) until both nodes are alive, print their ids.
WAIT_FOR_NODES = """
import json, sys, time, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
deadline = time.monotonic() + float(sys.argv[2])
while True:
    alive = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    if len(alive) >= 2 or time.monotonic() > deadline:
        break
    time.sleep(0.5)
print(json.dumps(alive))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ports() -> list[str]:
    """Every port a Ray node listens on, free ones: two nodes on one machine must not share the fixed defaults."""
    return [
        f"--node-manager-port={_free_port()}",
        f"--object-manager-port={_free_port()}",
        f"--dashboard-agent-listen-port={_free_port()}",
        f"--dashboard-agent-grpc-port={_free_port()}",
        f"--runtime-env-agent-port={_free_port()}",
        f"--metrics-export-port={_free_port()}",
    ]


def _start_node(args: list[str], temp_dir: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1")
    with open(log, "wb") as out:
        return subprocess.Popen(
            [str(RAY), "start", "--block", "--num-cpus=1", "--node-ip-address=127.0.0.1", *args, *_ports()]
            + [f"--temp-dir={temp_dir}", "--disable-usage-stats"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
            start_new_session=True,  # its own process group: raylet, GCS and workers stop with it, and only they
        )


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # the group may outlive its leader (workers): one more signal to the group, then done
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return


def test_clients_train_on_both_nodes_of_a_two_node_ray_cluster(tmp_path):
    if not RAY.is_file():
        pytest.skip(f"no ray command next to {sys.executable}")
    # Ray's unix sockets live in the temp dir: keep its path short (a socket path has at most 107 bytes)
    temp_root = Path(tempfile.mkdtemp(prefix="fr-", dir="/tmp"))
    head_port = _free_port()
    address = f"127.0.0.1:{head_port}"
    nodes: list[subprocess.Popen] = []
    try:
        head_args = ["--head", f"--port={head_port}", "--include-dashboard=false"]
        head_args += [f"--ray-client-server-port={_free_port()}"]
        nodes.append(_start_node(head_args, temp_root / "head", tmp_path / "head.log"))
        nodes.append(_start_node([f"--address={address}"], temp_root / "second", tmp_path / "second.log"))
        waited = subprocess.run(
            [sys.executable, "-c", WAIT_FOR_NODES, address, "180"],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=ROOT,
        )
        assert waited.returncode == 0, waited.stderr[-3000:]
        alive = json.loads(waited.stdout.strip().splitlines()[-1])
        logs = "\n".join((tmp_path / f"{n}.log").read_text(errors="replace")[-1500:] for n in ("head", "second"))
        assert len(alive) == 2, f"the cluster has {len(alive)} live nodes, not 2:\n{logs}"

        runs = tmp_path / "runs"
        settings = ["num-server-rounds=2", "local-epochs=1", "fraction-evaluate=0.0", "progress=false"]
        settings += ["run-id=cluster", "min-train-nodes=4", "min-available-nodes=4"]
        command = [sys.executable, "-m", "simulations.cli", "simulate", "-c", "digits-dp", "--no-dp", "-n", "4"]
        command += ["--ray-address", address, "--runs-dir", str(runs)]
        for item in settings:
            command += ["--set", item]
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=600,
            cwd=ROOT,
            env=dict(os.environ, FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1"),
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

        rounds = RunDir(runs / "cluster").read_metrics()
        trained = [r for r in rounds if r["round"] >= 1]
        assert [r["clients-trained"] for r in trained] == [4, 4]
        places: dict[str, int] = {}
        for r in trained:
            for place, count in r["trained-on"].items():
                places[place] = places.get(place, 0) + count
        assert sum(places.values()) == 8
        assert set(places) == {f"ray-node:{node}" for node in alive}, places
    finally:
        for proc in reversed(nodes):
            _stop(proc)
        shutil.rmtree(temp_root, ignore_errors=True)

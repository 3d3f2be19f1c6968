"""Real nodes on Flower's Deployment Engine, on loopback: a SuperLink and SuperNodes as separate processes.

One federation is shared by the checks below (starting one costs most of a minute on two busy cores): a SuperLink
with TLS and node authentication (an allow-list of four public keys), three hospital nodes with their own heart
disease file (a natural non-IID split) and a fourth registered node whose table has a column missing. A node with a
key not on the allow-list tries to join. During the 3-round DP run one node is killed after round 1 and comes back
later; after round 2 the whole server (SuperLink, its SuperExec and the ServerApp) is killed, restarted from its
database, and the run resumed with ``fedge run --resume``. Every process is stopped at the end, children included.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from server.credentials import make_node_keys, make_test_certificates
from server.processes import stop_tree

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path("/proc").is_dir(), reason="process-tree clean-up reads /proc (Linux)"),
]

DATA = Path(__file__).resolve().parent.parent / "data"
HOSPITALS = {
    "hungarian": "processed.hungarian.data",
    "switzerland": "processed.switzerland.data",
    "va": "processed.va.data",
}
ROUNDS = 3
TIMEOUT = 400  # seconds for the whole scenario; a hang fails instead of blocking CI


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fedge(*args: str) -> list[str]:
    return [sys.executable, "-m", "simulations.cli", *args]


def _env(root: Path) -> dict[str, str]:
    """Flower's own directory (installed apps, CLI config) inside the test's tmp dir, never the user's ~/.flwr."""
    return dict(
        os.environ,
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        PYTHONUNBUFFERED="1",
        FLWR_HOME=str(root / "flwr-home"),
    )


class Federation:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs = root / "logs"
        self.logs.mkdir()
        self.tls = make_test_certificates(root / "certs")
        self.keys = {k.name: k for k in make_node_keys(root / "keys", [*HOSPITALS, "mismatched", "rogue"])}
        self.runs = root / "runs"
        self.project_root = Path(__file__).resolve().parent.parent.parent

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            _fedge(*args), cwd=self.project_root, env=_env(self.root), stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    def start_server(self) -> None:
        allow = [a for n in (*HOSPITALS, "mismatched") for a in ("--allow", str(self.keys[n].public))]
        self.start(
            "server",
            [
                "server",
                "--dir",
                str(self.root / "server"),
                "--port",
                str(self.port),
                "--certs",
                str(self.root / "certs"),
            ]
            + allow,
        )
        self.wait_for(lambda: "SuperLink up" in self.log("server"), 120, "the SuperLink to start", "server")

    def start_node(self, name: str, data: Path, runtime_port: int, *extra: str) -> subprocess.Popen:
        return self.start(
            name,
            [
                "node",
                "--superlink",
                self.address,
                "--data",
                str(data),
                "--name",
                name,
                "--device",
                "auto",
                "--ca",
                str(self.tls.ca_certificate),
                "--auth-key",
                str(self.keys[name].private),
                "--state-dir",
                str(self.root / "nodes" / name),
                "--runtime-port",
                str(runtime_port),
                "--threads",
                "1",  # four nodes share the machine, as Ray's one-thread actors do in simulation
                *extra,
            ],
        )

    def wait_for(self, condition, timeout: float, what: str, log: str | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {what}" + (f"; log:\n{self.log(log)[-3000:]}" if log else ""))

    def connected(self, names, offsets: dict[str, int] | None = None) -> bool:
        """Every node in ``names`` has logged a (re)connection to the SuperLink since ``offsets`` (log lengths)."""
        offsets = offsets or {}
        for name in names:
            text = self.log(name)[offsets.get(name, 0) :]
            if "SuperNode ID" not in text and "Connection successful" not in text:
                return False
        return True

    def log_sizes(self) -> dict[str, int]:
        return {path.stem: len(path.read_text(errors="replace")) for path in self.logs.glob("*.log")}

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None:
            stop_tree(proc, kill=True)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)


def _rounds(run_dir: Path) -> list[dict]:
    try:
        return json.loads((run_dir / "metrics.json").read_text())["rounds"]
    except (OSError, ValueError, KeyError):
        return []


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    root = tmp_path_factory.mktemp("deployment")
    fed = Federation(root)
    started = time.monotonic()
    mismatched = root / "mismatched.csv"  # the hungarian table with its last feature column (thal) missing
    mismatched.write_text(
        "".join(
            ",".join(line.split(",")[:12] + line.split(",")[13:]) for line in (DATA / HOSPITALS["hungarian"]).open()
        )
    )
    try:
        fed.start_server()
        for name, file in HOSPITALS.items():
            fed.start_node(name, DATA / file, _free_port())
        fed.start_node("mismatched", mismatched, _free_port())
        rogue = fed.start_node("rogue", DATA / HOSPITALS["va"], _free_port(), "--join-attempts", "1")
        run_dir = fed.runs / "hd"
        settings = [
            "--set",
            f"runs-dir={fed.runs}",
            "--set",
            "run-id=hd",
            "--set",
            "progress=false",
            "--set",
            "local-epochs=1",
            # a fixed noise level, so a round spent by a node while the server was down does not exhaust the budget
            "--set",
            "noise-multiplier=1.0",
            "--set",
            "target-epsilon=50",
            "--set",
            "straggler-timeout=15",
            "--set",  # the server's evaluation table: heart-disease names none (no install ships one)
            f"data-path={DATA / 'processed.cleveland.data'}",
        ]
        common = ["--superlink", fed.address, "--ca", str(fed.tls.ca_certificate)]
        members = [*HOSPITALS, "mismatched"]
        fed.wait_for(lambda: fed.connected(members), 180, "four nodes to connect", "server")
        fed.start("run", ["run", *common, "--config", "heart-disease", "--rounds", str(ROUNDS), *settings])

        fed.wait_for(lambda: len(_rounds(run_dir)) >= 2, TIMEOUT, "round 1", "run")
        fed.stop("va")  # dies after round 1: round 2 must go on without it
        fed.wait_for(lambda: len(_rounds(run_dir)) >= 3, TIMEOUT, "round 2", "run")
        before_kill = json.loads((run_dir / "privacy.json").read_text())
        fed.stop("server")  # the SuperLink with its SuperExec and the ServerApp, killed at once
        fed.procs.pop("run").wait(timeout=120)
        rogue_code = rogue.wait(timeout=60)

        offsets = fed.log_sizes()
        fed.start_server()  # same database: the allow-list survives, the keys are already registered
        fed.start_node("va", DATA / HOSPITALS["va"], _free_port())  # rejoins with its accountant on disk
        # a node killed a moment ago is refused until its old session expires; fedge node tries again
        fed.wait_for(lambda: fed.connected(members, offsets), 240, "the nodes to reconnect", "va")
        # tracked like every other process: on a timeout stop_all() kills `fedge run` and its `flwr run` child
        resume = fed.start("resume", ["run", *common, "--resume", str(run_dir)])
        code = resume.wait(timeout=TIMEOUT)
        resumed = subprocess.CompletedProcess(resume.args, code, fed.log("resume"), "")
        acceptance = None
        if code == 0:  # issue 13 on the real nodes, while the federation is still up: package, then accept
            package = fed.start("package", ["package", str(run_dir), "-f", "onnx", "-V", "fp32", "-V", "int8"])
            if package.wait(timeout=TIMEOUT) == 0:
                accept = fed.start("accept", ["accept", str(run_dir), *common, "--timeout", "120"])
                acceptance = {"code": accept.wait(timeout=TIMEOUT), "output": fed.log("accept")}
                report = run_dir / "artifacts" / "acceptance.json"
                acceptance["report"] = json.loads(report.read_text()) if report.is_file() else None
            else:
                acceptance = {"code": None, "output": fed.log("package"), "report": None}
        yield {
            "run_dir": run_dir,
            "rounds": _rounds(run_dir),
            "privacy": json.loads((run_dir / "privacy.json").read_text()),
            "privacy_before_kill": before_kill,
            "resumed": resumed,
            "rogue_code": rogue_code,
            "rogue_log": fed.log("rogue"),
            "mismatched_log": fed.log("mismatched"),
            "acceptance": acceptance,
            "node_logs": {name: fed.log(name) for name in (*HOSPITALS, "mismatched")},
            "seconds": time.monotonic() - started,
        }
    finally:
        fed.stop_all()


def test_three_hospitals_train_with_dp_over_tls_and_accuracy_improves(deployment):
    rounds = deployment["rounds"]
    assert deployment["resumed"].returncode == 0, deployment["resumed"].stdout + deployment["resumed"].stderr
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    assert rounds[-1]["central-accuracy"] > rounds[0]["central-accuracy"] + 0.1
    clients = deployment["privacy"]["clients"]
    assert set(clients) == set(HOSPITALS)  # ε per node, by node name; the refused node never trained
    for name in HOSPITALS:
        assert 0 < clients[name]["epsilon"] < 50
    # every trained reply crossed the SuperLink with its arrays packed into one Array (pack-arrays)
    assert all(r["packed-replies"] == r["clients-trained"] > 0 for r in rounds[1:]), rounds


def test_nodes_ask_for_the_next_message_sooner_than_flowers_3_s(deployment):
    # every node ran Flower's SuperNode through client/supernode.py (the run above is what it took part in)
    for name, log in deployment["node_logs"].items():
        assert "this SuperNode asks for its next message 0.1 s after the last one" in log, name
        assert "polls as Flower does" not in log, name


def test_rejects_node_not_on_allow_list(deployment):
    assert deployment["rogue_code"] == 2
    assert "allow-list" in deployment["rogue_log"]
    assert "Traceback" not in deployment["rogue_log"]


def test_rejects_node_with_mismatched_csv_and_the_others_finish(deployment):
    for r in deployment["rounds"][1:]:
        reasons = list(r["failures"].values())
        assert any("SchemaMismatchError" in why and "columns" in why for why in reasons), r["failures"]
        assert r["clients-trained"] >= 2


def test_killed_node_is_skipped_and_rejoins(deployment):
    by_round = {r["round"]: r for r in deployment["rounds"]}
    assert by_round[2]["clients-trained"] == 2
    assert by_round[2]["clients-timed-out"] + by_round[2]["clients-failed"] >= 2  # va silent, mismatched refused
    va = deployment["privacy"]["clients"]["va"]
    assert 2 not in va["rounds"] and 3 in va["rounds"]
    # its accountant survived the restart of its node: ε after round 3 is above ε after its first round
    assert va["epsilons"][-1] > va["epsilons"][0] * 1.05


def test_resume_after_server_killed_keeps_the_ledger(deployment):
    rounds = deployment["rounds"]
    assert rounds[3].get("resumed") is True and "resumed" not in rounds[2]
    before = deployment["privacy_before_kill"]["clients"]
    after = deployment["privacy"]["clients"]
    for name in ("hungarian", "switzerland"):
        assert after[name]["rounds"][: len(before[name]["rounds"])] == before[name]["rounds"]
        assert after[name]["rounds"][-1] == 3
        eps = after[name]["epsilons"]
        assert eps == sorted(eps) and eps[-1] > eps[-2]  # the clients' accountants went on, not from zero
    assert (deployment["run_dir"] / "model.pt").is_file()


def test_artifacts_are_accepted_on_the_real_nodes(deployment):
    """fedge accept RUN_DIR --superlink: the exact files travel to every node, each hospital measures them on its own
    table; the node whose table does not fit is listed as failed, not a site."""
    acceptance = deployment["acceptance"]
    assert acceptance is not None and acceptance["report"] is not None, acceptance and acceptance["output"][-3000:]
    report, output = acceptance["report"], acceptance["output"]
    refused = [r["file"] for r in report["artifacts"] if r["verdict"] != "accepted"]
    assert acceptance["code"] == (1 if refused else 0), output[-3000:]
    assert [s["name"] for s in report["sites"]] == sorted(HOSPITALS)  # by node name: the hospitals' own tables
    assert all(s["samples"] > 100 for s in report["sites"])
    rows = {r["file"]: r for r in report["artifacts"]}
    assert set(rows) == {"fp32.onnx", "int8.onnx"}
    for row in rows.values():
        assert set(row["sites"]) == set(HOSPITALS)
        assert all(0 <= v["accuracy"] <= 1 for v in row["sites"].values())
    fp32 = rows["fp32.onnx"]
    assert fp32["reference"] == "global-model" and rows["int8.onnx"]["reference"] == "fp32.onnx"
    assert all(abs(v["drop"]) < 0.02 for v in fp32["sites"].values())  # the exported float model is the model
    (failed,) = report["failed-sites"]
    assert failed["site"] == "mismatched" and "SchemaMismatchError" in failed["reason"], failed
    # the report names the Flower run fedge accept submitted, and each description's lineage its sha256
    (flower_run,) = re.findall(r"Flower run (\d+) started", output)
    assert report["mode"].startswith("on the federation's nodes") and f"Flower run {flower_run})" in report["mode"]
    digest = hashlib.sha256((deployment["run_dir"] / "artifacts" / "acceptance.json").read_bytes()).hexdigest()
    for name in rows:
        lineage = json.loads((deployment["run_dir"] / "artifacts" / f"{name}.json").read_text())["lineage"]
        assert lineage["acceptance"]["sha256"] == digest and lineage["acceptance"]["sites"] == 3
    assert "Traceback" not in output

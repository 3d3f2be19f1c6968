"""Issue 13 end to end on the UCI heart-disease federation: a real DP simulation (Hungarian, Swiss and VA tables on
three nodes, Cleveland on the server), ``fedge package`` (ONNX fp32 + int8), ``fedge accept`` on the run (each
hospital's accuracy for the global model and each artifact), the acceptance gate in ``fedge publish`` on Mosquitto
(an artifact degraded for one hospital refused, the good one rolled out, its signed lineage read back from a
device with ``fedge inspect``), and field feedback through ``fedge fleet collect --rollback-on-degraded`` as a real
process: a group of devices whose labelled telemetry drifts below the acceptance report's worst site raises a
``degraded`` event and is rolled back by a signed command, and still takes a good update.

The simulation and the packaging run once for the module (about two minutes on a busy 2-core machine)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.agent.config import AgentConfig
from edge.agent.service import AgentService
from edge.delivery.brokers import free_port
from edge.delivery.collector import open_fleet_store
from edge.delivery.feedback import degraded_events
from edge.delivery.mosquitto import SERVER_USER, MosquittoProcess, write_mosquitto_files
from tests.integration.test_edge_delivery import needs_mosquitto, wait_for

pytestmark = [pytest.mark.integration, needs_mosquitto]

DATA = Path(__file__).resolve().parents[1] / "data"
HOSPITALS = ("hungarian", "switzerland", "va")
SITES = tuple(f"processed.{h}.data" for h in HOSPITALS)
MODEL_ID = "heart-mlp"
FEDGE = [sys.executable, "-m", "simulations.cli"]


def fedge(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """A fedge command as a person runs it (its own process: exit codes and messages as the shell sees them)."""
    env = {**os.environ, "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "COLUMNS": "200"}
    return subprocess.run([*FEDGE, *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def heart_run(tmp_path_factory) -> Path:
    """A finished heart-disease run (2 DP rounds, per-site evaluation) with its ONNX fp32 and int8 artifacts."""
    from simulations.experiment import apply_overrides, load_experiment
    from simulations.simulate import run_experiment

    runs = tmp_path_factory.mktemp("runs")
    experiment = load_experiment("heart-disease")
    apply_overrides(
        experiment,
        [
            f"runs-dir={runs}",
            "progress=false",
            f"data-path={DATA / 'processed.cleveland.data'}",
            "node-data-paths=" + ",".join(str(DATA / s) for s in SITES),
            "num-server-rounds=2",
            "fraction-evaluate=1.0",
            "min-evaluate-nodes=3",
        ],
    )
    experiment.num_supernodes = 3
    summary = run_experiment(experiment)
    run_dir = Path(summary["run-dir"])
    assert summary["privacy"]["clients"] and summary["rounds"][-1]["clients-trained"] == 3
    packaged = fedge("package", str(run_dir), "-f", "onnx", "-V", "fp32", "-V", "int8", "--latency-runs", "20")
    assert packaged.returncode == 0, packaged.stdout + packaged.stderr
    return run_dir


def _bias_towards_class_0(src: Path, dst: Path, shift: float) -> None:
    """The fp32 artifact with its output layer's class-1 bias lowered: it calls fewer patients ill, which costs the
    hospital with the most disease (Switzerland) most and may even help the one with the least (Hungary)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    graph_outputs = {o.name for o in model.graph.output}
    last = next(n for n in reversed(model.graph.node) if set(n.output) & graph_outputs)
    inits = {i.name: i for i in model.graph.initializer}
    bias_name = next(name for name in last.input if name in inits and numpy_helper.to_array(inits[name]).ndim == 1)
    bias = numpy_helper.to_array(inits[bias_name]).copy()
    assert bias.shape == (2,), bias.shape
    bias[1] -= shift
    inits[bias_name].CopyFrom(numpy_helper.from_array(bias, bias_name))
    dst.write_bytes(model.SerializeToString())


def _describe_like(folder: Path, template: str, name: str, variant: str) -> None:
    description = json.loads((folder / f"{template}.json").read_text())
    description.update(file=name, variant=variant, sha256=hashlib.sha256((folder / name).read_bytes()).hexdigest())
    description.pop("lineage", None)
    (folder / f"{name}.json").write_text(json.dumps(description, indent=2))


def _site_samples(run_dir: Path, site: str, path: Path) -> Path:
    from edge.export.acceptance import run_sites

    (found,) = [s for s in run_sites(run_dir) if s.name == site]
    np.savez(path, x=found.x.astype(np.float32), y=found.y.astype(np.int64))
    return path


class Fleet:
    """Mosquitto with these devices' logins, agents trusting a `fedge keygen` key, all stopped at the end."""

    def __init__(self, tmp_path: Path, devices: list[str], samples: Path) -> None:
        self.tmp = tmp_path
        keygen = fedge("keygen", str(tmp_path / "keys" / "server"))
        assert keygen.returncode == 0, keygen.stdout + keygen.stderr
        self.key = tmp_path / "keys" / "server.key"
        self.broker = MosquittoProcess(write_mosquitto_files(tmp_path / "mosquitto", port=free_port(), devices=devices))
        self.broker.start()
        self.server_url = self.broker.setup.address(SERVER_USER).url(with_password=True)
        self.agents: dict[str, AgentService] = {}
        for d in devices:
            config = AgentConfig(
                device_id=d,
                broker=self.broker.setup.address(d),
                store=tmp_path / "stores" / d,
                model_ids=(MODEL_ID,),
                trusted_keys=(tmp_path / "keys" / "server.pub",),
                data=samples,
                report_interval_s=0.3,
                samples_per_report=50,
            )
            self.agents[d] = AgentService(config).start()

    def publish(self, artifact: Path, version: int, *extra: str) -> subprocess.CompletedProcess:
        return fedge(
            "publish",
            str(artifact),
            "--broker",
            self.server_url,
            "--key",
            str(self.key),
            "--db",
            str(self.tmp / f"publish-{version}.db"),
            "--model-id",
            MODEL_ID,
            "--version",
            str(version),
            "--canary",
            "0",
            "--timeout",
            "60",
            *extra,
        )

    def on(self, version: int | None) -> bool:
        return all(a.agent.version == version for a in self.agents.values())

    def stop(self) -> None:
        for a in self.agents.values():
            a.stop()
        self.broker.stop()


def test_heart_disease_sites_accept_the_good_int8_and_the_gate_refuses_one_degraded_for_a_hospital(heart_run, tmp_path):
    artifacts = heart_run / "artifacts"
    _bias_towards_class_0(artifacts / "fp32.onnx", artifacts / "biased-fp32.onnx", shift=3.0)
    _describe_like(artifacts, "fp32.onnx", "biased-fp32.onnx", "biased-fp32")

    accepted = fedge("accept", str(heart_run))
    assert accepted.returncode == 1, accepted.stdout + accepted.stderr  # one artifact refused
    report = json.loads((artifacts / "acceptance.json").read_text())
    print("\n" + (artifacts / "acceptance.md").read_text())
    assert [s["name"] for s in report["sites"]] == list(SITES)
    assert [s["samples"] for s in report["sites"]] == [294, 123, 200]  # each hospital's whole table

    # the global model on each hospital's own data is what the federation measured there in its last round
    metrics = json.loads((heart_run / "metrics.json").read_text())
    last = [r for r in metrics["rounds"] if r.get("sites")][-1]["sites"]
    for site in SITES:
        assert report["reference-accuracy"][site] == pytest.approx(last[site.removesuffix(".data")]["accuracy"])

    rows = {r["file"]: r for r in report["artifacts"]}
    assert rows["fp32.onnx"]["verdict"] == "accepted" and rows["fp32.onnx"]["reference"] == "global-model"
    assert rows["fp32.onnx"]["worst-site-drop"] <= 0.01  # the same model in the device runtime
    int8 = rows["int8.onnx"]
    assert int8["verdict"] == "accepted" and int8["reference"] == "fp32.onnx"
    assert int8["worst-site"] in SITES and int8["worst-site-drop"] <= 0.05
    bad = rows["biased-fp32.onnx"]
    assert bad["verdict"] == "refused" and bad["worst-site"] == "processed.switzerland.data", bad
    assert bad["worst-site-drop"] > 0.3
    assert bad["sites"]["processed.hungarian.data"]["drop"] <= 0.0  # not worse where disease is rare
    assert "refused" in accepted.stdout and "accepted" in accepted.stdout

    fleet = Fleet(tmp_path, ["hosp-1", "hosp-2"], _site_samples(heart_run, "processed.va.data", tmp_path / "va.npz"))
    try:
        refused = fleet.publish(artifacts / "biased-fp32.onnx", 1)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        message = " ".join((refused.stdout + refused.stderr).split())
        assert "biased-fp32.onnx loses" in message and "processed.switzerland.data" in message, message
        assert "Nothing was published" in message and "Traceback" not in message
        assert fleet.on(None)  # the gate refused before anything was published

        good = fleet.publish(artifacts / "int8.onnx", 1)
        assert good.returncode == 0, good.stdout + good.stderr
        assert "completed" in good.stdout and "accept-site-drop" not in good.stdout
        assert wait_for(lambda: fleet.on(1), 30)

        # the lineage block as a device reports it (its retained state), read back by the fleet collector
        collect = subprocess.Popen(
            [*FEDGE, "fleet", "collect", "--broker", fleet.server_url, "--db", str(tmp_path / "fleet.db")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:

            def inspected():
                out = fedge("inspect", "hosp-1", "--db", str(tmp_path / "fleet.db"))
                return json.loads(out.stdout) if out.returncode == 0 else None

            assert wait_for(lambda: inspected() is not None, 60)
        finally:
            collect.terminate()
            collect.wait(10)
        device = inspected()
        print(json.dumps(device["lineage"], indent=2))
        lineage = device["lineage"]
        assert device["version"] == 1 and device["model_id"] == MODEL_ID
        assert lineage["acceptance"]["verdict"] == "accepted"
        report_sha = hashlib.sha256((artifacts / "acceptance.json").read_bytes()).hexdigest()
        assert lineage["acceptance"]["sha256"] == report_sha
        assert lineage["run-id"] == heart_run.name and lineage["sites-trained"] == 3
        ledger = json.loads((heart_run / "privacy.json").read_text())["clients"]
        assert lineage["privacy"]["epsilon-max"] == pytest.approx(max(c["epsilon"] for c in ledger.values()))
        assert device["epsilon"] == pytest.approx(lineage["privacy"]["epsilon-max"])
    finally:
        fleet.stop()
        (artifacts / "biased-fp32.onnx").unlink()
        (artifacts / "biased-fp32.onnx.json").unlink()


def test_a_drifting_device_group_is_rolled_back_by_fleet_collect_and_still_takes_a_good_update(heart_run, tmp_path):
    artifacts = tmp_path / "artifacts"
    shutil.copytree(heart_run / "artifacts", artifacts)
    if not (artifacts / "acceptance.json").is_file():  # this test run alone
        accepted = fedge("accept", str(heart_run), "--artifacts", str(artifacts))
        assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    acceptance = json.loads((artifacts / "int8.onnx.json").read_text())["lineage"]["acceptance"]
    devices = ["ward-1", "ward-2", "ward-3"]
    fleet = Fleet(tmp_path, devices, _site_samples(heart_run, "processed.va.data", tmp_path / "va.npz"))
    db = tmp_path / "fleet.db"
    log = (tmp_path / "collect.log").open("w")
    collect = subprocess.Popen(
        [*FEDGE, "fleet", "collect", "--broker", fleet.server_url, "--db", str(db), "--rollback-on-degraded"]
        + ["--key", str(fleet.key)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200"},
    )

    def events() -> list[dict]:
        if not db.is_file():
            return []
        store = open_fleet_store(str(db), read_only=True)
        try:
            return degraded_events(store)
        finally:
            store.close()

    try:
        assert wait_for(lambda: "collecting into" in (tmp_path / "collect.log").read_text(), 60)
        for version, artifact in ((1, "fp32.onnx"), (2, "int8.onnx")):
            out = fleet.publish(artifacts / artifact, version)
            assert out.returncode == 0, out.stdout + out.stderr
            assert wait_for(lambda v=version: fleet.on(v), 30)
        # the field's labels flip (the site starts coding 'no disease' as 1): accuracy falls far below the worst
        # site's at acceptance
        for a in fleet.agents.values():
            a.agent.samples.y = 1 - a.agent.samples.y
        assert wait_for(lambda: any(e["version"] == 2 for e in events()), 90), (tmp_path / "collect.log").read_text()
        (event,) = [e for e in events() if e["version"] == 2]
        assert event["model_id"] == MODEL_ID and sorted(event["devices"]) == devices and event["measure"] == "accuracy"
        assert event["baseline"] == pytest.approx(acceptance["accuracy-min"]) and event["value"] < event["baseline"]
        assert wait_for(lambda: fleet.on(1), 30), "the signed rollback did not reach every device"
        assert wait_for(lambda: events()[-1]["action"] == "rollback", 10)
        for a in fleet.agents.values():
            assert a.agent.last_update["outcome"] == "rolled-back" and a.agent.last_update["version"] == 2

        # the drift is in the data, so v1 degrades as well: raised, but the group is not rolled back again
        assert wait_for(lambda: any(e["version"] == 1 for e in events()), 90), (tmp_path / "collect.log").read_text()
        (again,) = [e for e in events() if e["version"] == 1]
        assert again["action"].startswith("held"), again
        assert fleet.on(1)
        for a in fleet.agents.values():
            assert a.agent.last_update["outcome"] == "rolled-back"

        # the site fixes its labels; a good update goes out and is taken
        for a in fleet.agents.values():
            a.agent.samples.y = 1 - a.agent.samples.y
        out = fleet.publish(artifacts / "int8.onnx", 3)
        assert out.returncode == 0, out.stdout + out.stderr
        assert wait_for(lambda: fleet.on(3), 30)
    finally:
        collect.terminate()
        try:
            collect.wait(10)
        except subprocess.TimeoutExpired:
            collect.kill()
            collect.wait()
        log.close()
        fleet.stop()

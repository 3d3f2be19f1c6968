"""The worked examples in simulations/examples/ run as a user runs them: each project's own run config (its
pyproject.toml), a real Flower simulation (2 rounds, DP), fedge's packaging of the user's model to int8 in both
formats, and, for iot-sensors, device agents that receive the int8 model over MQTT and run it on held-out windows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).parents[2] / "simulations" / "examples"


def _simulate(example: str, runs: Path, **settings) -> dict:
    from simulations.experiment import apply_settings, load_experiment
    from simulations.simulate import run_experiment

    experiment = load_experiment(str(EXAMPLES / example))
    apply_settings(experiment, {"num-server-rounds": 2, "runs-dir": str(runs), "progress": False, **settings})
    return run_experiment(experiment)


def _package(run_dir: str, out: Path):
    from edge.export.package import PackageOptions, package_model
    from edge.export.run_source import run_package_inputs

    options = PackageOptions(formats=("onnx", "tflite"), variants=("int8",), latency_runs=20)
    return package_model(run_package_inputs(run_dir), out, options)


@pytest.fixture
def export_tools():
    for module in ("onnxruntime", "onnxscript", "litert_torch", "ai_edge_litert"):
        pytest.importorskip(module)


def test_hospitals_example_one_node_per_hospital_with_its_own_model(tmp_path, export_tools):
    summary = _simulate("hospitals", tmp_path / "runs")
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert all(r["clients-trained"] == 3 for r in rounds[1:]), rounds  # Budapest, Zurich/Basel, Long Beach
    assert 0 < summary["privacy"]["max-epsilon"] <= 8.0 + 1e-6
    result = _package(summary["run-dir"], tmp_path / "artifacts")
    for fmt in ("onnx", "tflite"):
        artifact = result.artifact("int8", fmt)
        assert artifact["model"] == "hospitals.task:build_model"
        assert artifact["metrics"]["top1-agreement"] >= 0.9, artifact["metrics"]
        assert artifact["metrics"]["test-samples"] > 100  # half of Cleveland's 303 patients


def test_iot_sensors_example_reaches_devices_that_run_it_on_held_out_windows(tmp_path, export_tools):
    pytest.importorskip("amqtt")
    from edge.agent.config import AgentConfig
    from edge.agent.runtime import load_runner, probabilities
    from edge.agent.service import AgentService
    from edge.delivery.brokers import EmbeddedBrokerProcess, free_port
    from edge.delivery.collector import FleetCollector, FleetStore
    from edge.delivery.keys import SigningKey
    from edge.delivery.rollout import RolloutPolicy, publish_rollout, sign_models
    from shared_models.registry import add_to_path

    summary = _simulate("iot-sensors", tmp_path / "runs")
    assert all(r["clients-trained"] == 4 for r in summary["rounds"][1:]), summary["rounds"]
    result = _package(summary["run-dir"], tmp_path / "artifacts")
    artifacts = {fmt: result.out_dir / result.artifact("int8", fmt)["file"] for fmt in ("onnx", "tflite")}

    # The held-out windows: the TEST file's recordings, which no node trained on.
    add_to_path(EXAMPLES / "iot-sensors")
    from iot_sensors.samples import write_samples

    samples = tmp_path / "held-out.npz"
    count = write_samples(str(EXAMPLES / "iot-sensors" / "data" / "BasicMotions_TEST.ts"), str(samples))
    assert count == 80  # 40 recordings, two 5-second windows each
    held_out = np.load(samples)
    expected = {}
    for fmt, path in artifacts.items():  # what the device's own runtime makes of every window
        runner = load_runner(fmt, path.read_bytes())
        predicted = [int(np.argmax(probabilities(runner.predict(x)))) for x in held_out["x"]]
        expected[fmt] = float(np.mean(np.array(predicted) == held_out["y"]))

    key = SigningKey.generate()
    (tmp_path / "server.pub").write_bytes(key.public_pem())
    broker = EmbeddedBrokerProcess(free_port()).start(timeout=30)
    collector = FleetCollector(broker.address(), FleetStore(tmp_path / "fleet.db")).start()
    agents = []
    try:
        for device, runtime in (("watch-1", "onnx"), ("watch-2", "tflite")):
            config = AgentConfig(
                device_id=device,
                broker=broker.address(),
                store=tmp_path / "devices" / device,
                model_ids=("iot-sensors",),
                runtime=runtime,
                trusted_keys=(tmp_path / "server.pub",),
                data=samples,
                report_interval_s=0.3,
                samples_per_report=count,  # one report = every held-out window once
            )
            agents.append(AgentService(config).start())
        models = sign_models(list(artifacts.values()), key, model_id="iot-sensors", version=1)
        report = publish_rollout(
            models,
            broker=broker.address(),
            key=key,
            db=tmp_path / "publish.db",
            devices=("watch-1", "watch-2"),
            policy=RolloutPolicy(canary_fraction=0, apply_timeout_s=60, health_timeout_s=60),
            fleet_timeout_s=30,
        )
        assert report.status == "completed", report
        devices = ("watch-1", "watch-2")
        assert collector.wait_until(lambda s: all(s.reports_since(d, 1, 0) >= 1 for d in devices), 60)
        rows = {r["device_id"]: r for r in collector.store.devices()}
        assert rows["watch-1"]["runtime"] == "onnx" and rows["watch-2"]["runtime"] == "tflite"
        assert rows["watch-1"]["version"] == rows["watch-2"]["version"] == 1
        # Each device reports the accuracy its runtime gives on the held-out windows, as computed here.
        assert rows["watch-1"]["accuracy"] == pytest.approx(expected["onnx"], abs=1e-4)
        assert rows["watch-2"]["accuracy"] == pytest.approx(expected["tflite"], abs=1e-4)
        assert expected["onnx"] > 0.25 and expected["tflite"] > 0.25  # better than guessing one of 4 motions
    finally:
        for agent in agents:
            agent.stop()
        collector.stop()
        broker.stop()

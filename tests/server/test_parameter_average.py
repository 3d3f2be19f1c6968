"""server-ema: the server's moving average of the global models (math, settings, run record, resume)."""

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, MetricRecord, RecordDict

from server.config import ServerConfig
from server.errors import ServerConfigError
from server.parameter_average import ParameterAverage
from server.resume import load_server_state
from server.server_app import run_server
from shared_models.run_config import DEFAULT_RUN_CONFIG
from shared_models.run_dir import RunDir, read_json
from tests.server.scripted_grid import ScriptedGrid

pytestmark = pytest.mark.usefixtures("task_identity")


def test_average_of_known_arrays_weighs_round_s_by_decay_to_the_t_minus_s():
    average = ParameterAverage(decay=0.5)
    rounds = [np.array([1.0, -2.0], np.float32), np.array([4.0, 0.0], np.float32), np.array([7.0, 2.0], np.float32)]
    outs = [average.update({"w": x}) for x in rounds]
    assert np.allclose(outs[0]["w"], rounds[0]), "bias-corrected: round 1's average is round 1's model"
    assert np.allclose(outs[1]["w"], (0.5 * rounds[0] + rounds[1]) / 1.5)
    assert np.allclose(outs[2]["w"], (0.25 * rounds[0] + 0.5 * rounds[1] + rounds[2]) / 1.75)
    assert outs[2]["w"].dtype == np.float32, "each array keeps its dtype"


def test_integer_buffers_are_taken_from_the_latest_round_not_averaged():
    average = ParameterAverage(decay=0.9)
    average.update({"steps": np.array(1, np.int64), "w": np.zeros(1, np.float32)})
    out = average.update({"steps": np.array(4, np.int64), "w": np.ones(1, np.float32)})
    assert out["steps"] == 4 and out["steps"].dtype == np.int64


def test_state_round_trip_goes_on_as_if_never_stopped():
    one, rounds = ParameterAverage(decay=0.7), [np.full(3, float(i), np.float32) for i in range(4)]
    for x in rounds[:2]:
        one.update({"w": x})
    other = ParameterAverage(decay=0.7)
    other.load_state_dict(one.state_dict())
    for x in rounds[2:]:
        expected, got = one.update({"w": x}), other.update({"w": x})
        assert np.allclose(expected["w"], got["w"])


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, float("nan")])
def test_a_decay_outside_0_to_1_is_refused_naming_the_setting(bad):
    with pytest.raises(ServerConfigError, match=r"server-ema must be in \[0, 1\)"):
        ServerConfig.from_run_config({**DEFAULT_RUN_CONFIG, "server-ema": bad})


def test_server_ema_defaults_to_off():
    assert ServerConfig.from_run_config(DEFAULT_RUN_CONFIG).server_ema == 0.0


class PlusOne:
    """Nodes whose training adds 1 to every float weight: round r's global model is the initial one + r."""

    def __init__(self):
        self.sent: list[dict[str, np.ndarray]] = []

    def __call__(self, node, msg):
        incoming = {k: a.numpy() for k, a in msg.content["arrays"].items()}
        if node == 1:
            self.sent.append(incoming)
        trained = {k: torch.from_numpy(v + 1.0 if v.dtype.kind == "f" else v) for k, v in incoming.items()}
        metrics = MetricRecord({"num-examples": 10, "train-loss": 0.1})
        return RecordDict({"arrays": ArrayRecord(trained), "metrics": metrics})


def _run(tmp_path, **settings):
    run = {
        **DEFAULT_RUN_CONFIG,
        "runs-dir": str(tmp_path),
        "run-id": "ema",
        "num-server-rounds": 3,
        "dp": False,
        "progress": False,
        "model": "digits-cnn",
        "pack-arrays": False,  # PlusOne is a ClientApp of its own, not fedge's: it reads plain arrays only
        **settings,
    }
    nodes = PlusOne()
    run_server(ScriptedGrid([1, 2], nodes), ServerConfig.from_run_config(run))
    return nodes, RunDir(tmp_path / "ema")


def test_the_average_is_evaluated_checkpointed_and_saved_while_clients_train_the_plain_model(tmp_path):
    nodes, run = _run(tmp_path, **{"server-ema": 0.5})
    initial = torch.load(run.checkpoint(0))
    key = next(k for k, v in initial.items() if v.is_floating_point())
    # the clients get the plain aggregate: initial + r - 1 in round r
    assert [float((s[key] - initial[key].numpy()).mean()) for s in nodes.sent] == pytest.approx([0, 1, 2])
    # the server reports the average of rounds 1..3 (initial + 1, + 2, + 3; weights 0.25, 0.5, 1)
    expected = (0.25 * 1 + 0.5 * 2 + 3) / 1.75
    final = torch.load(run.model)
    assert float((final[key] - initial[key]).mean()) == pytest.approx(expected, abs=1e-5)
    assert torch.equal(torch.load(run.checkpoint(3))[key], final[key])
    rounds = read_json(run.metrics)["rounds"]
    assert [r.get("evaluated-model") for r in rounds[1:]] == ["server-ema 0.5"] * 3
    saved = load_server_state(run.path)
    assert float((saved.arrays[key] - initial[key].numpy()).mean()) == pytest.approx(3.0, abs=1e-5)
    assert saved.average is not None and saved.average["weight"] == pytest.approx(1.75)


def test_without_server_ema_the_plain_global_model_is_reported(tmp_path):
    _, run = _run(tmp_path)
    initial, final = torch.load(run.checkpoint(0)), torch.load(run.model)
    key = next(k for k, v in initial.items() if v.is_floating_point())
    assert float((final[key] - initial[key]).mean()) == pytest.approx(3.0, abs=1e-5)
    assert read_json(run.metrics)["rounds"][-1]["evaluated-model"] == "global"
    assert load_server_state(run.path).average is None


def test_a_resumed_run_goes_on_averaging_where_it_stopped(tmp_path):
    whole = tmp_path / "whole"
    _run(whole, **{"server-ema": 0.5})
    parts = tmp_path / "parts"
    _run(parts, **{"server-ema": 0.5, "num-server-rounds": 2})
    _run(parts, **{"server-ema": 0.5, "resume-from": str(parts / "ema")})
    a, b = torch.load(RunDir(whole / "ema").model), torch.load(RunDir(parts / "ema").model)
    key = next(k for k, v in a.items() if v.is_floating_point())
    assert torch.allclose(a[key], b[key], atol=1e-6)

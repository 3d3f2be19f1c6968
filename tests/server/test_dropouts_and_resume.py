"""Dropouts, stragglers and resume in the round loop and the server's saved state (in-process grid)."""

import json
import random

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg

from server.config import ServerConfig
from server.errors import ServerConfigError
from server.ledger import PrivacyLedger
from server.resume import (
    ResumeError,
    ServerState,
    load_server_state,
    load_strategy_state,
    save_server_state,
    strategy_state,
)
from server.rounds import RoundLoop
from shared_models.run_config import DEFAULT_RUN_CONFIG
from tests.server.scripted_grid import ScriptedGrid

pytestmark = pytest.mark.usefixtures("task_identity")


def _reply(value: float, name: str, eps: float) -> RecordDict:
    return RecordDict(
        {
            "arrays": ArrayRecord({"w": Array(np.full(2, value, np.float32))}),
            "metrics": MetricRecord({"num-examples": 10, "epsilon": eps}),
            "client": ConfigRecord({"partition-id": 0, "node-name": name}),
        }
    )


def _loop(grid, **kw) -> RoundLoop:
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=1, min_available_nodes=1)
    return RoundLoop(strategy=strategy, grid=grid, ledger=PrivacyLedger(3.0, 1e-5), stream=True, **kw)


def test_silent_node_is_counted_and_skipped_once_enough_replied():
    seen = []

    def behaviour(node, msg):
        seen.append(msg.metadata.ttl)
        if node == 3:
            return None  # died: never answers
        if node == 4:
            return Error(code=0, reason="SchemaMismatchError: 13 columns")
        return _reply(float(node), f"hospital-{node}", 1.0)

    loop = _loop(ScriptedGrid([1, 2, 3, 4], behaviour), round_timeout=60.0, min_replies=2, straggler_timeout=0.05)
    arrays = ArrayRecord({"w": Array(np.zeros(2, np.float32))})
    outcome = loop.train_round(1, arrays, ConfigRecord())
    assert (outcome.replied, outcome.failed, outcome.timed_out) == (2, 1, 1)
    assert "SchemaMismatchError" in outcome.failures["4"]
    assert np.allclose(outcome.arrays["w"].numpy(), 1.5)  # mean of the two that trained
    assert seen and all(ttl == 60.0 for ttl in seen), "messages expire with the round"
    assert set(loop.ledger.clients) == {"hospital-1", "hospital-2"}


def test_fewer_replies_than_required_keeps_the_model():
    loop = _loop(
        ScriptedGrid([1, 2], lambda n, m: _reply(5.0, "a", 1.0) if n == 1 else None),
        round_timeout=0.2,
        min_replies=2,
    )
    arrays = ArrayRecord({"w": Array(np.zeros(2, np.float32))})
    outcome = loop.train_round(1, arrays, ConfigRecord())
    assert outcome.replied == 1 and outcome.timed_out == 1
    assert np.allclose(outcome.arrays["w"].numpy(), 0.0)


def test_ledger_keeps_each_rounds_epsilon_across_a_round_trip():
    ledger = PrivacyLedger(3.0, 1e-5)
    for r, eps in ((1, 0.5), (2, 0.9)):
        ledger.record_training("va", r, eps)
    again = PrivacyLedger.from_state_dict(ledger.state_dict())
    assert again.clients["va"].epsilons == [0.5, 0.9] and again.clients["va"].rounds == [1, 2]


def test_server_state_round_trip_restores_strategy_ledger_and_sampling(tmp_path):
    strategy = FedAdam()
    strategy.current_arrays = {"w": np.ones(2, np.float32)}
    strategy.m_t = {"w": np.full(2, 0.25, np.float32)}
    strategy.v_t = {"w": np.full(2, 0.5, np.float32)}
    ledger = PrivacyLedger(3.0, 1e-5)
    ledger.record_training("hungarian", 1, 0.7)
    random.seed(7)
    state = ServerState(
        server_round=2,
        arrays={"w": np.arange(2, dtype=np.float32)},
        strategy=strategy_state(strategy),
        ledger=ledger.state_dict(),
        python_random=random.getstate(),
        torch_random=torch.get_rng_state(),
        rounds=[{"round": 0}, {"round": 1}, {"round": 2}],
    )
    expected_draws = [random.random() for _ in range(3)]
    save_server_state(tmp_path, state)
    loaded = load_server_state(tmp_path)
    again = FedAdam()
    load_strategy_state(again, loaded.strategy)
    assert np.allclose(again.m_t["w"], 0.25) and np.allclose(again.v_t["w"], 0.5)
    assert loaded.server_round == 2 and [r["round"] for r in loaded.rounds] == [0, 1, 2]
    assert PrivacyLedger.from_state_dict(loaded.ledger).clients["hungarian"].epsilons == [0.7]
    random.setstate(loaded.python_random)
    assert [random.random() for _ in range(3)] == expected_draws, "node sampling goes on as if never stopped"


def test_resume_refuses_missing_or_torn_state(tmp_path):
    with pytest.raises(ResumeError, match="no saved server state"):
        load_server_state(tmp_path)
    (tmp_path / "resume.pt").write_bytes(b"not a torch file")
    with pytest.raises(ResumeError, match="cannot read"):
        load_server_state(tmp_path)


def test_a_server_killed_while_saving_keeps_the_previous_rounds_state(tmp_path, monkeypatch):
    def state(server_round):
        return ServerState(
            server_round=server_round,
            arrays={"w": np.full(2, server_round, np.float32)},
            strategy={},
            ledger={},
            python_random=random.getstate(),
            torch_random=torch.get_rng_state(),
            rounds=[{"round": r} for r in range(server_round + 1)],
        )

    save_server_state(tmp_path, state(1))

    def dies_half_way(obj, fh, *args, **kwargs):
        fh.write(b"PK\x03\x04 half a zip")
        raise OSError("killed")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError, match="killed"):
        save_server_state(tmp_path, state(2))
    monkeypatch.undo()
    loaded = load_server_state(tmp_path)
    assert loaded.server_round == 1 and loaded.arrays["w"].tolist() == [1.0, 1.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resume.pt"]


def test_resume_keeps_the_runs_own_id(tmp_path):
    from flwr.app import Context, RecordDict

    run_dir = tmp_path / "hd-1"
    ctx = Context(
        run_id=1,
        node_id=0,
        node_config={},
        state=RecordDict(),
        run_config={**DEFAULT_RUN_CONFIG, "resume-from": str(run_dir), "run-id": "x"},
    )
    with pytest.raises(ServerConfigError, match="keep its own"):
        ServerConfig.from_context(ctx)
    ctx.run_config["run-id"] = "hd-1"
    assert ServerConfig.from_context(ctx).run_dir == run_dir.resolve()


def test_a_round_shows_in_metrics_only_once_it_can_be_resumed(tmp_path):
    """Whoever sees round N in metrics.json (a person, the dashboard, an operator who then restarts the server) can
    count on a restart going on from round N + 1: the resume state is saved before the round is published."""
    from server.ledger import PrivacyLedger
    from server.run_record import RunRecord
    from shared_models.run_dir import RunDir

    record = RunRecord(tmp_path / "run", config={}, model_info={})
    ledger = PrivacyLedger(3.0, 1e-5)
    seen_when_saving: list[list[int]] = []

    def save_resume_state() -> None:
        metrics = RunDir(tmp_path / "run").metrics
        seen_when_saving.append(
            [r["round"] for r in json.loads(metrics.read_text())["rounds"]] if metrics.exists() else []
        )

    record.add_round({"round": 0, "central-accuracy": 0.1}, ledger)
    record.add_round({"round": 1, "central-accuracy": 0.5}, ledger, before_write=save_resume_state)
    assert seen_when_saving == [[0]]  # round 1 was not yet in metrics.json while its resume state was written
    assert [r["round"] for r in RunDir(tmp_path / "run").read_metrics()] == [0, 1]

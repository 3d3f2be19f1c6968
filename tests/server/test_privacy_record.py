"""privacy.json holds what ε rests on (σ, q, steps per round and in total, δ, clipping norm, accountant), so ε can
be recomputed independently: here with Google's dp-accounting, not Opacus, from a client that really trained."""

import json

import dp_accounting
import pytest
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from client.client_app import train_locally
from client.config import PrivacyConfig
from server.ledger import DpRound, PrivacyLedger, parse_history
from server.run_record import RunRecord
from shared_models.models import build_model
from shared_models.run_dir import RunDir
from tests.client.digits_client import digits_client

DELTA = 1e-5
# Opacus's RDP orders, so both accountants take their minimum over the same orders.
ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))


def _recompute(entries: list[tuple[float, float, int]], delta: float) -> float:
    accountant = dp_accounting.rdp.RdpAccountant(ORDERS)
    for sigma, q, steps in entries:
        event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
        accountant.compose(event, steps)
    return accountant.get_epsilon(delta)


def test_epsilon_in_the_run_record_is_recomputed_by_dp_accounting_within_one_percent(tmp_path):
    privacy = PrivacyConfig(target_epsilon=4.0, target_delta=DELTA, max_grad_norm=0.7, planned_rounds=3)
    config = digits_client(privacy, model="digits-mlp")
    arrays = ArrayRecord(build_model("digits-mlp", input_shape=(1, 8, 8), num_classes=10, seed=0).state_dict())
    state, ledger = RecordDict(), PrivacyLedger(4.0, DELTA)
    for server_round in (1, 2):
        reply = train_locally(config, arrays, ConfigRecord({"server-round": server_round}), state)
        metrics = reply["metrics"]
        history = parse_history(str(reply["client"]["dp-history"]))
        ledger.record_training(
            "0", server_round, metrics["epsilon"], node_id=7, dp=DpRound.from_metrics(metrics), history=history
        )
    record = RunRecord(tmp_path / "run", config={}, model_info={})
    record.add_round({"round": 2}, ledger)
    client = RunDir(tmp_path / "run").read_privacy()["clients"]["0"]

    assert client["accountant"] == "rdp" and client["delta"] == DELTA and client["max-grad-norm"] == 0.7
    per_round = client["per-round"]
    assert [r["round"] for r in per_round] == [1, 2]
    assert client["steps"] == sum(r["steps"] for r in per_round) == 2 * client["steps-per-round"]
    # from the per-round numbers alone
    recomputed = _recompute([(r["noise-multiplier"], r["sample-rate"], r["steps"]) for r in per_round], DELTA)
    assert recomputed == pytest.approx(client["epsilon"], rel=0.01)
    # and from the accountant's own history
    assert _recompute([tuple(h) for h in client["accountant-history"]], DELTA) == pytest.approx(
        client["epsilon"], rel=0.01
    )
    assert per_round[1]["epsilon"] == client["epsilon"] > per_round[0]["epsilon"]
    assert client["projected-epsilon"] > client["epsilon"]
    json.dumps(client)  # plain JSON all through


def test_the_ledger_survives_a_round_trip_through_its_state():
    ledger = PrivacyLedger(3.0, DELTA)
    ledger.record_training("a", 1, 1.0, node_id=5, dp=DpRound(2.0, 0.1, 10, 1.0), history=[(2.0, 0.1, 10)])
    ledger.record_discarded(["a"], 1)
    ledger.record_refusal("b", 1, 2.9, "privacy budget exhausted", node_id=6)
    again = PrivacyLedger.from_state_dict(json.loads(json.dumps(ledger.state_dict())))
    assert again.state_dict() == ledger.state_dict()
    assert again.unaffordable_nodes() == {6: "b"}  # refused since it last trained, no history: not asked


def test_reply_without_dp_numbers_keeps_the_old_record():
    assert DpRound.from_metrics({"epsilon": 1.0}) is None
    assert parse_history("not json") is None and parse_history("") is None

"""Budget-aware sampling, discarded rounds, per-site evaluation and q-FedAvg, through the round loop on an
in-process grid (a real simulation of the same is in tests/integration/test_sites_and_budget.py)."""

import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from server.ledger import PrivacyLedger
from server.rounds import RoundLoop
from server.sites import fairness
from server.strategies import StrategyOptions, build_strategy
from shared_models.privacy_projection import epsilon_of
from shared_models.run_config import DEFAULT_RUN_CONFIG
from tests.server.scripted_grid import ScriptedGrid

pytestmark = pytest.mark.usefixtures("task_identity")

DELTA = 1e-5
TARGET = 3.0
# One round of each client: (σ, q, steps). Node 3's rounds are far noisier in ε: after one it cannot afford two.
ROUND = {1: (2.0, 0.1, 20), 2: (2.0, 0.1, 20), 3: (1.2, 0.1, 20)}


def _start() -> ArrayRecord:
    return ArrayRecord({"w": Array(np.zeros((2, 2), np.float32))})


class DpNodes:
    """Nodes that train with a DP accountant of their own: each reply carries σ, q, steps, ε and the history, and a
    node refuses a round that would take it over the budget, as client/client_app.py does."""

    def __init__(self, rounds=ROUND, *, silent=()):
        self.rounds, self.silent = rounds, set(silent)
        self.history: dict[int, list] = {n: [] for n in rounds}
        self.asked: list[tuple[int, str]] = []

    def __call__(self, node, msg):
        self.asked.append((node, msg.metadata.message_type))
        if node in self.silent:
            return None
        if msg.metadata.message_type == "evaluate":
            acc = {1: 0.9, 2: 0.8, 3: 0.55}[node]
            return RecordDict(
                {
                    "metrics": MetricRecord({"eval-accuracy": acc, "eval-loss": 1 - acc, "num-examples": 10 * node}),
                    "client": ConfigRecord({"partition-id": node - 1, "site": f"hospital-{node}"}),
                }
            )
        after = [*self.history[node], self.rounds[node]]
        if epsilon_of(after, delta=DELTA) > TARGET:
            return RecordDict(
                {
                    "metrics": MetricRecord({"refused": 1, "epsilon": epsilon_of(self.history[node], delta=DELTA)}),
                    "refusal": ConfigRecord(
                        {"reason": "privacy budget exhausted", "partition-id": node - 1, "dp-history": "[]"}
                    ),
                }
            )
        self.history[node] = after
        sigma, q, steps = self.rounds[node]
        return RecordDict(
            {
                "arrays": ArrayRecord({"w": Array(np.full((2, 2), float(node), np.float32))}),
                "metrics": MetricRecord(
                    {
                        "num-examples": 10,
                        "train-loss": 0.5 * node,
                        "epsilon": epsilon_of(after, delta=DELTA),
                        "noise-multiplier": sigma,
                        "sample-rate": q,
                        "dp-steps": steps,
                        "max-grad-norm": 1.0,
                    }
                ),
                "client": ConfigRecord({"partition-id": node - 1, "dp-history": json.dumps([list(h) for h in after])}),
            }
        )


def _loop(nodes: DpNodes, *, min_replies=1, strategy=None, **kw) -> RoundLoop:
    return RoundLoop(
        strategy=strategy or FedAvg(fraction_evaluate=0.0, min_available_nodes=2, min_train_nodes=2),
        grid=ScriptedGrid([1, 2, 3], nodes),
        ledger=PrivacyLedger(TARGET, DELTA),
        stream=True,
        round_timeout=0.3,
        min_replies=min_replies,
        **kw,
    )


def test_round_projection_matches_the_scripted_budget():
    assert epsilon_of([ROUND[3]], delta=DELTA) < TARGET < epsilon_of([ROUND[3]] * 2, delta=DELTA)
    assert epsilon_of([ROUND[1]] * 3, delta=DELTA) < TARGET


def test_a_client_without_budget_is_not_sampled_and_the_round_goes_on_with_the_others():
    nodes = DpNodes()
    loop = _loop(nodes)
    loop.run(_start(), num_rounds=2)
    round_two = [node for node, kind in nodes.asked[3:] if kind == "train"]
    assert sorted(round_two) == [1, 2], nodes.asked  # node 3 (spent) not asked; nodes with budget left all asked
    assert loop.stopped is None
    record = loop.ledger.state_dict()["clients"]
    assert record["2"]["refused-rounds"] == [] and record["2"]["rounds"] == [1]
    assert record["2"]["projected-epsilon"] > TARGET
    assert record["0"]["rounds"] == [1, 2]


def test_a_round_that_cannot_reach_min_replies_among_affordable_clients_is_not_started():
    nodes = DpNodes({1: ROUND[3], 2: ROUND[3], 3: ROUND[1]})  # two of three can afford only one round
    loop = _loop(nodes, min_replies=2)
    loop.run(_start(), num_rounds=3)
    assert loop.stopped is not None and loop.stopped["round"] == 2
    assert "only 1 of 3 clients can afford another round" in loop.stopped["reason"]
    assert "min-replies=2" in loop.stopped["reason"]
    assert [kind for _, kind in nodes.asked].count("train") == 3  # round 1 only: nobody spent ε on round 2
    # the loop still runs a round once enough clients can afford it
    ok = _loop(DpNodes(), min_replies=2)
    ok.run(_start(), num_rounds=2)
    assert ok.stopped is None


def test_a_discarded_round_is_recorded_and_its_epsilon_stays_spent():
    nodes = DpNodes(silent={3})
    loop = _loop(nodes, min_replies=3)
    outcome = loop.train_round(1, _start(), ConfigRecord())
    assert outcome.discarded and outcome.replied == 2
    np.testing.assert_array_equal(outcome.arrays["w"].numpy(), np.zeros((2, 2)))  # the global model unchanged
    clients = loop.ledger.state_dict()["clients"]
    for cid in ("0", "1"):
        assert clients[cid]["discarded-rounds"] == [1]
        assert clients[cid]["per-round"][0]["discarded"] is True
        assert clients[cid]["epsilon"] == pytest.approx(epsilon_of([ROUND[1]], delta=DELTA))  # not refunded


def test_per_site_evaluation_names_the_worst_site_every_k_rounds():
    strategy = FedAvg(fraction_evaluate=1.0, min_available_nodes=3, min_evaluate_nodes=3)
    nodes = DpNodes(rounds={n: ROUND[1] for n in (1, 2, 3)})
    loop = _loop(nodes, strategy=strategy, evaluate_every=2)
    outcomes = []
    loop.run(_start(), num_rounds=3, after_round=outcomes.append)
    assert [bool(o.sites) for o in outcomes] == [False, True, True]  # every 2nd round, and the last
    sites = outcomes[-1].sites
    assert sites["hospital-3"] == {"accuracy": 0.55, "loss": pytest.approx(0.45), "examples": 30}
    summary = fairness(sites, threshold=0.6)
    assert summary["worst-site"] == "hospital-3" and summary["sites-below-threshold"] == ["hospital-3"]
    assert summary["site-accuracy-spread"] == pytest.approx(0.35)


def test_qfedavg_runs_as_a_strategy_by_name():
    options = StrategyOptions.from_run_config(
        {**DEFAULT_RUN_CONFIG, "strategy": "qfedavg", "qfedavg-q": 0.5, "fraction-evaluate": 0.0}
    )
    strategy = build_strategy("qfedavg", options)
    assert type(strategy).__name__ == "QFedAvg" and strategy.q == 0.5
    loop = RoundLoop(
        strategy=strategy,
        grid=ScriptedGrid([1, 2, 3], DpNodes(rounds={n: ROUND[1] for n in (1, 2, 3)})),
        ledger=PrivacyLedger(TARGET, DELTA),
        stream=False,  # q-FedAvg is not a weighted mean: it needs every reply
    )
    outcome = loop.train_round(1, _start(), ConfigRecord())
    assert outcome.replied == 3
    assert not np.allclose(outcome.arrays["w"].numpy(), 0.0)  # the global model moved towards the clients


def test_without_budget_aware_sampling_every_client_is_asked_and_the_spent_one_refuses():
    nodes = DpNodes()
    loop = _loop(nodes, budget_aware=False)
    outcomes = []
    loop.run(_start(), num_rounds=2, after_round=outcomes.append)
    assert sorted(node for node, _ in nodes.asked[3:]) == [1, 2, 3]
    assert outcomes[1].refused == 1 and outcomes[1].not_affordable == 0

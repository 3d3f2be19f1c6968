"""Real Flower simulations (Ray backend) of a few clients, end to end through our ServerApp and ClientApp."""

import json
from pathlib import Path

import pytest

from simulations.experiment import apply_overrides, load_experiment
from simulations.simulate import run_experiment

pytestmark = pytest.mark.integration


def _run(tmp_path, settings, *, clients=3, config="digits-dp"):
    experiment = load_experiment(config)
    apply_overrides(experiment, [f"runs-dir={tmp_path}", "progress=false", *settings])
    experiment.num_supernodes = clients
    return run_experiment(experiment)


def test_dp_simulation_learns_and_accounts_epsilon_over_the_whole_run(tmp_path):
    summary = _run(tmp_path, ["num-server-rounds=3", "min-train-nodes=3", "min-available-nodes=3"])
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    assert summary["final-accuracy"] > summary["initial-accuracy"] + 0.15
    eps = [r["epsilon-max"] for r in rounds[1:]]
    assert eps[0] < eps[1] < eps[2] <= 3.0, "ε must grow across rounds (one accountant per client for the run)"
    privacy = summary["privacy"]
    assert sorted(privacy["clients"]) == ["0", "1", "2"]
    assert all(c["rounds"] == [1, 2, 3] and 2.5 < c["epsilon"] <= 3.0 for c in privacy["clients"].values())
    run_dir = Path(summary["run-dir"])
    assert run_dir.parent == tmp_path
    for name in (
        "config.json",
        "metrics.json",
        "privacy.json",
        "model.json",
        "model.pt",
        "accuracy.png",
        "epsilon.png",
    ):
        assert (run_dir / name).is_file(), name
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [f"round-00{i}.pt" for i in range(4)]
    assert json.loads((run_dir / "model.json").read_text())["model"] == load_experiment("digits-dp").run_config["model"]
    # fedge simulate feeds Flower's simulation engine a window of messages per Ray actor, not all at once
    assert json.loads((run_dir / "config.json").read_text())["max-in-flight"] >= 16
    # the simulation's messages never leave the process as Flower objects: nothing is packed there
    assert all(r["packed-replies"] == 0 for r in rounds[1:])


def test_exhausted_budget_stops_clients_and_the_run_goes_on(tmp_path):
    # Fixed noise sigma=1, 9 steps at q=1/9 per round: round 1 spends ε=3.6, round 2 would reach 4.44 > 4.0,
    # so every client refuses rounds 2 and 3.
    summary = _run(
        tmp_path,
        [
            "num-server-rounds=3",
            "noise-multiplier=1.0",
            "target-epsilon=4.0",
            "local-epochs=1",
            "batch-size=80",
            # the server asks every client (budget-aware sampling would not start round 2): each client's own
            # accountant is the authority and refuses
            "budget-aware-sampling=false",
        ],
        clients=2,
    )
    rounds = summary["rounds"]
    assert rounds[1]["clients-trained"] == 2 and rounds[1]["clients-refused"] == 0
    assert rounds[2]["clients-trained"] == 0 and rounds[2]["clients-refused"] == 2
    assert rounds[3]["clients-refused"] == 2
    assert rounds[3]["central-accuracy"] == rounds[1]["central-accuracy"], "no update after every client refused"
    for client in summary["privacy"]["clients"].values():
        assert 3.5 < client["epsilon"] <= 4.0
        assert client["refused-rounds"] == [2, 3]
        assert "privacy budget exhausted" in client["last-refusal"]


def test_robust_strategy_without_dp(tmp_path):
    summary = _run(
        tmp_path, ["num-server-rounds=2", "dp=false", "strategy=fedmedian", "learning-rate=0.1", "local-epochs=1"]
    )
    assert summary["final-accuracy"] > summary["initial-accuracy"] + 0.2
    assert all(r.get("epsilon-max") is None for r in summary["rounds"])

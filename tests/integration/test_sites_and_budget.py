"""The UCI heart-disease hospitals in a real Flower simulation: the global model evaluated on every hospital's own
table each round (the worst site named), and a hospital whose budget cannot take another round not asked again."""

from pathlib import Path

import pytest

from simulations.experiment import apply_overrides, load_experiment
from simulations.simulate import run_experiment

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[1] / "data"
HOSPITALS = ("hungarian", "switzerland", "va")


def test_heart_disease_sites_evaluated_each_round_and_a_spent_hospital_not_sampled(tmp_path):
    experiment = load_experiment("heart-disease")
    nodes = ",".join(str(DATA / f"processed.{h}.data") for h in HOSPITALS)
    apply_overrides(
        experiment,
        [
            f"runs-dir={tmp_path}",
            "progress=false",
            f"data-path={DATA / 'processed.cleveland.data'}",
            f"node-data-paths={nodes}",
            "num-server-rounds=2",
            "fraction-evaluate=1.0",
            "min-evaluate-nodes=3",
            "site-accuracy-threshold=0.99",
            # fixed noise: Switzerland's small table (large sampling rate) affords one round, the others two
            "noise-multiplier=1.2",
            "target-epsilon=5.5",
        ],
    )
    experiment.num_supernodes = 3
    summary = run_experiment(experiment)
    rounds = summary["rounds"]
    sites = {f"processed.{h}" for h in HOSPITALS}
    for r in rounds[1:]:
        assert set(r["sites"]) == sites, r
        assert all(0.0 <= s["accuracy"] <= 1.0 and s["examples"] > 0 for s in r["sites"].values())
        accuracies = {name: s["accuracy"] for name, s in r["sites"].items()}
        assert r["worst-site"] == min(accuracies, key=accuracies.get)
        assert r["site-accuracy-spread"] == pytest.approx(max(accuracies.values()) - min(accuracies.values()))
        assert r["worst-site"] in r["sites-below-threshold"]
    assert rounds[1]["clients-trained"] == 3
    assert rounds[2]["clients-not-affordable"] == 1 and rounds[2]["clients-trained"] == 2, rounds[2]
    assert rounds[2]["clients-refused"] == 0, "the spent hospital must not be asked, so it has nothing to refuse"
    clients = summary["privacy"]["clients"]
    assert clients["1"]["rounds"] == [1] and clients["1"]["projected-epsilon"] > 5.5  # Switzerland
    assert clients["0"]["rounds"] == [1, 2] and clients["2"]["rounds"] == [1, 2]
    assert all(c["epsilon"] <= 5.5 and c["noise-multiplier"] == 1.2 for c in clients.values())
    assert (Path(summary["run-dir"]) / "sites.png").is_file()

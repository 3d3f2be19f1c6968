"""Reading a run back for packaging: the run directory's records, old and new."""

from __future__ import annotations

from edge.export.run_source import run_federated_data
from shared_models.run_config import DEFAULT_RUN_CONFIG


def test_config_json_wins_then_model_json_then_the_defaults():
    info = {"dataset": "mnist", "data-path": "/data/mnist", "seed": 4}
    fed = run_federated_data(info, {"dataset": "digits", "data-path": "", "test-fraction": 0.3})
    assert (fed.dataset, fed.data_path, fed.seed, fed.test_fraction) == ("digits", "", 4, 0.3)
    assert fed.partitioner == DEFAULT_RUN_CONFIG["partitioner"]  # a record from before the key existed


def test_a_run_without_config_json_is_read_from_model_json():
    fed = run_federated_data({"dataset": "digits", "test-fraction": 0.25, "seed": 2}, {})
    assert (fed.dataset, fed.test_fraction, fed.seed) == ("digits", 0.25, 2)

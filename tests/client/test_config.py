"""The client's run settings: the learning-rate schedule and its bad values."""

from __future__ import annotations

import pytest
from flwr.app import Context, RecordDict

from client.config import ClientConfig
from client.errors import ClientConfigError
from shared_models.run_config import DEFAULT_RUN_CONFIG, RunConfigError


def _config(run: dict) -> ClientConfig:
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={**DEFAULT_RUN_CONFIG, **run})
    return ClientConfig.from_context(context)


def test_learning_rate_decays_once_per_round():
    config = _config({"learning-rate": 0.5, "learning-rate-decay": 0.8})
    assert config.learning_rate_at(1) == pytest.approx(0.5)
    assert config.learning_rate_at(2) == pytest.approx(0.4)
    assert config.learning_rate_at(4) == pytest.approx(0.5 * 0.8**3)


def test_without_a_decay_the_learning_rate_stays():
    config = _config({"learning-rate": 0.3, "learning-rate-decay": 1.0})
    assert [config.learning_rate_at(r) for r in (1, 5, 50)] == pytest.approx([0.3, 0.3, 0.3])


@pytest.mark.parametrize("run", [{"learning-rate": 0.0}, {"learning-rate-decay": 0.0}, {"learning-rate-decay": -0.5}])
def test_a_learning_rate_or_decay_that_is_not_positive_is_refused(run):
    with pytest.raises(ClientConfigError, match="must be > 0"):
        _config(run)


def test_a_missing_key_names_itself_instead_of_falling_back_to_another_default():
    run = {k: v for k, v in DEFAULT_RUN_CONFIG.items() if k != "learning-rate"}
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=run)
    with pytest.raises(RunConfigError, match=r"no 'learning-rate'.*\[tool\.flwr\.app\.config\]"):
        ClientConfig.from_context(context)


def test_the_client_takes_pyprojects_defaults():
    config = _config({})
    assert (config.learning_rate, config.local_epochs, config.privacy.planned_rounds) == (
        DEFAULT_RUN_CONFIG["learning-rate"],
        DEFAULT_RUN_CONFIG["local-epochs"],
        DEFAULT_RUN_CONFIG["num-server-rounds"],
    )

"""The client's run settings: the learning-rate schedule and its bad values."""

from __future__ import annotations

import pytest
from flwr.app import Context, RecordDict

from client.config import ClientConfig
from client.errors import ClientConfigError


def _config(run: dict) -> ClientConfig:
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=run)
    return ClientConfig.from_context(context)


def test_learning_rate_decays_once_per_round():
    config = _config({"learning-rate": 0.5, "learning-rate-decay": 0.8})
    assert config.learning_rate_at(1) == pytest.approx(0.5)
    assert config.learning_rate_at(2) == pytest.approx(0.4)
    assert config.learning_rate_at(4) == pytest.approx(0.5 * 0.8**3)


def test_without_a_decay_the_learning_rate_stays():
    config = _config({"learning-rate": 0.3})
    assert [config.learning_rate_at(r) for r in (1, 5, 50)] == pytest.approx([0.3, 0.3, 0.3])


@pytest.mark.parametrize("run", [{"learning-rate": 0.0}, {"learning-rate-decay": 0.0}, {"learning-rate-decay": -0.5}])
def test_a_learning_rate_or_decay_that_is_not_positive_is_refused(run):
    with pytest.raises(ClientConfigError, match="must be > 0"):
        _config(run)

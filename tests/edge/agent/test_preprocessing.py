"""The device applies the preprocessing an artifact declares (numpy only) and feeds any sample shape it fits."""

from __future__ import annotations

import numpy as np
import pytest

from edge.agent.errors import AgentConfigError, ModelRuntimeError
from edge.agent.runtime import Preprocessing, _fit


def test_scale_then_standardize_per_feature_and_per_channel():
    table = Preprocessing.from_spec({"standardize": {"mean": [1.0, 2.0], "std": [2.0, 4.0]}})
    assert table.apply(np.array([3.0, 6.0])).tolist() == [1.0, 1.0]
    image = Preprocessing.from_spec({"scale": 1 / 255, "standardize": {"mean": [0.5, 0.0], "std": [0.5, 1.0]}})
    out = image.apply(np.full((2, 2, 2), 255.0))  # channels first: one mean per channel
    assert np.allclose(out[0], 1.0) and np.allclose(out[1], 1.0)


def test_transpose_moves_a_channels_last_sample_to_channels_first():
    steps = Preprocessing.from_spec({"transpose": [2, 0, 1], "layout": "NCHW"})
    assert steps.apply(np.zeros((8, 8, 3))).shape == (3, 8, 8)


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"normalise": 1}, "unknown preprocessing step 'normalise'"),
        ({"standardize": {"mean": [0.0], "std": [0.0]}}, "every std > 0"),
        ({"scale": "big"}, "must be numbers"),
        ({"layout": "HWC?"}, "unknown layout"),
        ({"transpose": [0, 0]}, "permutation"),
    ],
)
def test_a_bad_spec_is_refused_by_name(spec, message):
    with pytest.raises(AgentConfigError, match=message):
        Preprocessing.from_spec(spec)


def test_samples_fit_fixed_and_dynamic_inputs():
    assert _fit(np.zeros((5, 3)), (1, 5, 3), np.float32).shape == (1, 5, 3)
    assert _fit(np.zeros(15), (1, 5, 3), np.float32).shape == (1, 5, 3)
    # a sequence model with a dynamic time axis takes a sample of any length
    assert _fit(np.zeros((9, 3)), (1, 1, 3), np.float32, (True, True, False)).shape == (1, 9, 3)
    assert _fit(np.array([[1.0, 2.0]]), (1, 1, 2), np.int64).dtype == np.int64
    with pytest.raises(ModelRuntimeError, match=r"shape \(4,\)"):
        _fit(np.zeros(4), (1, 5, 3), np.float32)

"""Server-side parameter averaging: an exponential moving average (EMA) of the global models, round by round.

DP-SGD's global model wanders with the clients' noise; an average of the last rounds' models sits nearer the
optimum than any one of them (Polyak-Ruppert averaging; De et al. 2022 use an EMA of the parameters for DP-SGD).
It is post-processing of what the clients already released, so it costs no privacy: the clients' ε is unchanged.

The average is bias-corrected, like Adam's moments: after rounds 1..t it weighs round s by ``decay ** (t - s)``,
normalized, so round 1's average is round 1's model (not a blend with the untrained initial model):

>>> average = ParameterAverage(decay=0.5)
>>> average.update({"w": np.array([2.0])})["w"].tolist()
[2.0]
>>> average.update({"w": np.array([5.0])})["w"].tolist()  # (0.5 * 2 + 5) / (0.5 + 1)
[4.0]

The clients keep training from the plain aggregate; the average is what the server evaluates, checkpoints and
writes as the run's model.pt (``server-ema`` in the run config; 0 turns it off).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from server.errors import ServerConfigError


def check_decay(decay: float) -> float:
    """``decay`` if it is a valid ``server-ema`` (0 <= decay < 1), else a :class:`ServerConfigError` saying why."""
    if not (isinstance(decay, int | float) and math.isfinite(decay) and 0.0 <= decay < 1.0):
        raise ServerConfigError(
            f"server-ema must be in [0, 1) (0 = off; 0.5 averages about the last 2 rounds' models, 0.9 the last "
            f"10), got {decay!r}"
        )
    return float(decay)


class ParameterAverage:
    """A bias-corrected exponential moving average of named arrays, with ``state_dict`` for checkpoint/resume."""

    def __init__(self, *, decay: float) -> None:
        self.decay = check_decay(decay)
        self.weight = 0.0
        """Sum of the rounds' weights so far: ``decay * weight + 1`` each update (0 before the first)."""
        self.average: dict[str, np.ndarray] = {}

    def update(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Fold in one round's global model; return the average so far (each array in its incoming dtype)."""
        if self.average and set(arrays) != set(self.average):
            raise ServerConfigError(
                f"the global model's arrays changed between rounds ({sorted(set(arrays) ^ set(self.average))}); "
                "parameter averaging needs one model for the whole run"
            )
        self.weight = self.decay * self.weight + 1.0
        share = 1.0 / self.weight  # the new model's share of the average
        for key, value in arrays.items():
            value = np.asarray(value)
            if key not in self.average or not np.issubdtype(value.dtype, np.floating):
                self.average[key] = value.astype(np.float64)  # first round; integer buffers (counters) are copied
            else:
                self.average[key] += (value.astype(np.float64) - self.average[key]) * share
        return {key: self.average[key].astype(np.asarray(arrays[key]).dtype) for key in arrays}

    def state_dict(self) -> dict[str, Any]:
        """The average and its weight (the decay comes from the run config, as every other setting does)."""
        return {"weight": self.weight, "average": {k: v.copy() for k, v in self.average.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.weight = float(state["weight"])
        self.average = {k: np.asarray(v, dtype=np.float64).copy() for k, v in state["average"].items()}

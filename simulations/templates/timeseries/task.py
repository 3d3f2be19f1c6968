"""{{name}}: the model and the data fedge trains (the time-series template).

fedge calls two functions of this file, named in pyproject.toml's [tool.flwr.app.config]:

- ``build_model(input_shape, num_classes, **options)``: a fresh torch model; ``options`` are the run config's
  ``model-options.NAME`` keys. Taking ``width`` lets ``fedge package`` distil a narrower student from it.
- ``load_data(data_path, **options)``: ``(x, y)``: float32 windows shaped (N, channels, steps) and integer class
  ids; ``options`` are the ``data-options.NAME`` keys. In a simulation it returns the whole set (fedge splits it
  between the simulated devices and keeps a test split for the server); on a real node, that node's own windows.

The data: a synthetic 3-axis motion sensor (four activities: rest, walk, run, shake), written by ``fedge new`` as
data/sensors.npz (x: (N, 3, 32) windows of readings, y: activity ids). Replace it with your own windows in the same
layout. A recurrent model works too: an nn.GRU or nn.LSTM trains with DP once dp-fix-model = true (fedge swaps it
for Opacus's DPGRU/DPLSTM, keeping the weights).
"""

from __future__ import annotations

import numpy as np
from torch import nn


def build_model(input_shape: tuple[int, ...], num_classes: int, channels: int = 16, width: float = 1.0) -> nn.Module:
    """A 1-D CNN over the time axis."""
    c = max(2, 2 * round(channels * width / 2))
    sensors, steps = input_shape
    return nn.Sequential(
        nn.Conv1d(sensors, c, 5, padding=2),
        nn.GroupNorm(2, c),
        nn.ReLU(),
        nn.MaxPool1d(2),
        nn.Conv1d(c, c, 5, padding=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Linear(c, num_classes),
    )


def load_data(data_path: str) -> tuple[np.ndarray, np.ndarray]:
    """Windows (N, channels, steps) and their labels from an .npz file with arrays x and y."""
    with np.load(data_path) as archive:
        return archive["x"].astype(np.float32), archive["y"].astype(np.int64)

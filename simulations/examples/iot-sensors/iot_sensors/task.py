"""The model and the data of the IoT sensors example: what fedge calls by the import paths in pyproject.toml.

The data: BasicMotions, a smart watch's 3-D accelerometer and 3-D gyroscope (6 channels, 100 steps at 10 Hz) while
four people stood, walked, ran or played badminton. A device classifies a 5-second window (50 steps): the loader
cuts every case into windows with fedge's built-in ``.ts`` reader, so each sample is (6 channels, 50 steps).

The model: a 1-D CNN, two convolutions with GroupNorm (DP-SGD needs per-sample gradients, which BatchNorm does not
allow), global average pooling over time and one linear layer: about 2,400 parameters at 16 channels, small enough
for DP's noise and for a microcontroller-class device.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from shared_models.loaders import load_ts


def build_model(input_shape: tuple[int, ...], num_classes: int, *, channels: int = 16, width: float = 1.0) -> nn.Module:
    """A 1-D CNN for windows shaped (sensor channels, steps); ``width`` scales its channels (a distilled student)."""
    sensors, _steps = input_shape
    c = max(4, 4 * round(channels * width / 4))  # GroupNorm(4, c) needs a multiple of 4
    return nn.Sequential(
        nn.Conv1d(sensors, c, kernel_size=5, padding=2),
        nn.GroupNorm(4, c),
        nn.ReLU(),
        nn.MaxPool1d(2),
        nn.Conv1d(c, c, kernel_size=5, padding=2),
        nn.GroupNorm(4, c),
        nn.ReLU(),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Linear(c, num_classes),
    )


def load_data(data_path: str, *, window: int = 50, stride: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Windows of ``window`` steps every ``stride`` steps from a ``.ts`` file: x (N, 6, window), y class ids in the
    file's ``@classLabel`` order (Standing, Running, Walking, Badminton)."""
    x, y = load_ts(data_path, window=window, stride=stride)
    return x, y

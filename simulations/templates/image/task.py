"""{{name}}: the model and the data fedge trains (the image template).

fedge calls two functions of this file, named in pyproject.toml's [tool.flwr.app.config]:

- ``build_model(input_shape, num_classes, **options)``: a fresh torch model; ``options`` are the run config's
  ``model-options.NAME`` keys. Taking ``width`` lets ``fedge package`` distil a narrower student from it.
- ``load_data(data_path, **options)``: ``(x, y)``: float32 samples shaped (N, *input_shape) and integer class ids;
  ``options`` are the ``data-options.NAME`` keys. In a simulation it returns the whole set (fedge splits it between
  the simulated nodes and keeps a test split for the server); on a real node, that node's own data.

``device_preprocessing(**options)`` tells the device what to do to a raw sample before inference, so it sees what
training saw: here, scale pixels from 0..255 to 0..1.

The data: scikit-learn's 8x8 digits, written by ``fedge new`` as PNG files, one folder per class (data/0, data/1,
...). Put your own images in the same layout (and set data-options.size) to train on them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn


def build_model(input_shape: tuple[int, ...], num_classes: int, channels: int = 8, width: float = 1.0) -> nn.Module:
    """A small CNN. GroupNorm, not BatchNorm: DP-SGD needs layers that treat every sample on its own."""
    c = max(2, 2 * round(channels * width / 2))
    in_channels, height, width_px = input_shape
    return nn.Sequential(
        nn.Conv2d(in_channels, c, 3, padding=1),
        nn.GroupNorm(2, c),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c, 2 * c, 3, padding=1),
        nn.GroupNorm(2, 2 * c),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * c * (height // 4) * (width_px // 4), num_classes),
    )


def load_data(data_path: str, size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Grayscale images from ``data_path/<class>/*.png``, resized to ``size`` x ``size``, scaled to 0..1."""
    from PIL import Image

    root = Path(data_path)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    xs, ys = [], []
    for label, name in enumerate(classes):
        for file in sorted((root / name).glob("*.png")):
            with Image.open(file) as image:
                pixels = np.asarray(image.convert("L").resize((size, size)), dtype=np.float32)
            xs.append(pixels[None, :, :])
            ys.append(label)
    return np.stack(xs) / 255.0, np.asarray(ys, dtype=np.int64)


def device_preprocessing(size: int = 8) -> dict:
    """On the device, a sample arrives as raw pixels (0..255, shape (1, size, size)): scale it as training did."""
    return {"scale": 1 / 255, "layout": "NCHW"}

"""{{name}}: the model and the data fedge trains (the tabular template).

fedge calls two functions of this file, named in pyproject.toml's [tool.flwr.app.config]:

- ``build_model(input_shape, num_classes, **options)``: a fresh torch model; ``options`` are the run config's
  ``model-options.NAME`` keys. Taking ``width`` lets ``fedge package`` distil a narrower student from it.
- ``load_data(data_path, **options)``: ``(x, y)``: float32 samples shaped (N, features) and integer class ids;
  ``options`` are the ``data-options.NAME`` keys. In a simulation it returns the whole set (fedge splits it between
  the simulated nodes and keeps a test split for the server); on a real node, that node's own table.

``device_preprocessing(**options)`` tells the device what to do to a raw row before inference: standardize each
feature with the same mean and standard deviation as training (kept in data/feature-stats.json, so every node and
every device uses the same numbers).

The data: scikit-learn's breast cancer table, written by ``fedge new`` as data/table.csv (a header row, 30 numeric
features, a ``label`` column). Put your own table there (numbers only, one label column) and write its
features' mean and std into data/feature-stats.json.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from torch import nn

STATS = Path(__file__).resolve().parent.parent / "data" / "feature-stats.json"


def build_model(input_shape: tuple[int, ...], num_classes: int, hidden: int = 32, width: float = 1.0) -> nn.Module:
    """An MLP with two hidden layers."""
    h = max(2, round(hidden * width))
    return nn.Sequential(nn.Linear(input_shape[0], h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, num_classes))


def read_table(data_path: str, label_column: str = "label") -> tuple[np.ndarray, np.ndarray]:
    with open(data_path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], [r for r in rows[1:] if r]
    label = header.index(label_column)
    values = np.asarray(body, dtype=np.float64)
    return np.delete(values, label, axis=1).astype(np.float32), values[:, label].astype(np.int64)


def load_data(data_path: str, label_column: str = "label") -> tuple[np.ndarray, np.ndarray]:
    """The table's features, standardized with the project's statistics, and its labels."""
    x, y = read_table(data_path, label_column)
    stats = json.loads(STATS.read_text())
    return ((x - np.asarray(stats["mean"])) / np.asarray(stats["std"])).astype(np.float32), y


def device_preprocessing(label_column: str = "label") -> dict:
    """On the device, a row arrives as raw features: standardize it as training did."""
    stats = json.loads(STATS.read_text())
    return {"standardize": {"mean": stats["mean"], "std": stats["std"]}}

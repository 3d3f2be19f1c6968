"""The model and the data of the hospitals example: what fedge calls by the import paths in pyproject.toml.

The data: UCI Heart Disease, one table per hospital (Cleveland, Budapest, Zurich/Basel, Long Beach), 13 clinical
features of a patient and the diagnosis (0 = no disease, 1-4 = disease). Each hospital is a node with its own file
(the natural split): the tables differ in size, in missing values (Zurich/Basel records no cholesterol) and in how
many patients are sick, which is the federation's real difficulty.

The model: a small residual MLP with a gated skip (not fedge's tabular-mlp): ~1,500 parameters at 32 hidden units.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from shared_models.loaders.tables import read_table

COLUMNS = "age,sex,cp,trestbps,chol,fbs,restecg,thalach,exang,oldpeak,slope,ca,thal,num".split(",")


class HeartNet(nn.Module):
    """Features -> hidden -> (hidden + a residual block) -> classes."""

    def __init__(self, num_features: int, num_classes: int, hidden: int) -> None:
        super().__init__()
        self.inputs = nn.Linear(num_features, hidden)
        self.block = nn.Sequential(nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inputs(x)
        return self.head(torch.relu(h + self.block(h)))


def build_model(input_shape: tuple[int, ...], num_classes: int, *, hidden: int = 32, width: float = 1.0) -> nn.Module:
    """The residual MLP for (features,) inputs; ``width`` scales its hidden units (a distilled student)."""
    (num_features,) = input_shape
    return HeartNet(num_features, num_classes, max(2, round(hidden * width)))


def load_data(data_path: str, *, binarize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One hospital's table: missing values take this table's column means, features are standardized with this
    table's own statistics (nothing leaves the hospital), and the diagnosis is disease yes/no (``binarize``) or its
    grade 0-4."""
    table = read_table(
        data_path,
        header=False,
        columns=COLUMNS,
        label_column="num",
        binarize_at=1.0 if binarize else 0.0,
        num_classes=2 if binarize else 5,
        standardize_features=True,
    )
    return table.x, table.y

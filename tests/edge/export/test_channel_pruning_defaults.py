"""A model whose graph channel pruning cannot follow: the default package builds everything else and says why in a
note; asking for a channels-* variant by name is an error that names the layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edge.compress.calibration import CalibrationSet
from edge.compress.errors import PruningError
from edge.compress.pruning import prune_channels
from edge.export import PackageInputs, PackageOptions, package_model
from tests.edge.compress.trained_digits import INPUT_SHAPE, digits_split


class ResidualNet(nn.Module):
    """Every layer's channels are summed with a skip connection: no layer can lose output channels."""

    def __init__(self) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.hidden = nn.Linear(64, 64)
        self.out = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(x)
        return self.out(torch.relu(self.hidden(x)) + x)


def _inputs() -> PackageInputs:
    train, test = digits_split()
    torch.manual_seed(0)
    return PackageInputs(
        model=ResidualNet().eval(),
        model_name="digits-cnn",  # the student is the registry's digits CNN at a width multiplier
        input_shape=INPUT_SHAPE,
        num_classes=10,
        test=test,
        tune=train,
        calibration=CalibrationSet.from_dataset(train, input_shape=INPUT_SHAPE, limit=64),
    )


def test_explicit_channel_pruning_names_the_layer_that_blocks_it():
    with pytest.raises(PruningError, match=r"hidden: its output feeds add.*-V pruned-int8"):
        prune_channels(ResidualNet(), amount=0.5)


def test_default_package_skips_channel_pruning_with_a_note(tmp_path):
    options = PackageOptions(formats=("onnx",), fine_tune_epochs=0, distill_epochs=1, latency_runs=3)
    result = package_model(_inputs(), tmp_path, options)
    files = {a["file"] for a in result.artifacts}
    assert "int8.onnx" in files and "pruned-int8.onnx" in files and "student-int8.onnx" in files
    assert not any(f.startswith("channels") for f in files)
    assert any(n.startswith("channels-* variants skipped") and "hidden" in n for n in result.notes), result.notes


def test_asking_for_channels_by_name_fails_with_the_reason(tmp_path):
    options = PackageOptions(formats=("onnx",), variants=("fp32", "channels-int8"), fine_tune_epochs=0)
    with pytest.raises(PruningError, match="hidden"):
        package_model(_inputs(), tmp_path, options)


def test_channel_pruning_shrinks_one_dimensional_convolutions():
    model = nn.Sequential(
        nn.Conv1d(3, 16, 5),
        nn.GroupNorm(4, 16),
        nn.ReLU(),
        nn.MaxPool1d(2),
        nn.Conv1d(16, 32, 3),
        nn.ReLU(),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Linear(32, 4),
    )
    pruned = prune_channels(model, amount=0.5).model
    assert (pruned[0].out_channels, pruned[4].in_channels, pruned[4].out_channels, pruned[8].in_features) == (
        8,
        8,
        16,
        16,
    )
    assert pruned(torch.randn(2, 3, 40)).shape == (2, 4)

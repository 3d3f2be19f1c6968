import math

import pytest
import torch
from torch import nn

from edge.compress import FineTune, PruningError, SparsityError, prune_channels, prune_unstructured, sparsity_of
from shared_models.models import build_model, count_parameters
from shared_models.training import evaluate
from tests.edge.compress.trained_digits import INPUT_SHAPE, digits_split, trained_digits_cnn


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
def test_unstructured_pruning_reaches_the_asked_sparsity(sparsity):
    model = build_model("mnist-cnn", input_shape=(1, 28, 28), num_classes=10, seed=0)
    result = prune_unstructured(model, sparsity=sparsity)
    assert result.sparsity == pytest.approx(sparsity, abs=1e-4)
    assert sparsity_of(result.model) == pytest.approx(sparsity, abs=1e-4)
    # zeros alone change no shape: the file stays as large
    assert result.shapes_after == result.shapes_before
    assert result.parameters_after == result.parameters_before
    assert result.nonzero_after < result.nonzero_before or sparsity == 0.0


def test_unstructured_pruning_keeps_its_zeros_through_the_fine_tune_and_leaves_the_original_alone():
    model = trained_digits_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train, test = digits_split()
    result = prune_unstructured(model, sparsity=0.6, fine_tune=FineTune(data=train, epochs=1))
    assert result.sparsity == pytest.approx(0.6, abs=1e-3)
    assert not any(hasattr(m, "weight_mask") for m in result.model.modules()), "the masks must be made permanent"
    assert evaluate(result.model, test).accuracy > 0.85
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert math.isfinite(result.fine_tune_loss)


def test_channel_pruning_really_shrinks_the_layers_of_the_mnist_cnn():
    model = build_model("mnist-cnn", input_shape=(1, 28, 28), num_classes=10, seed=0)
    result = prune_channels(model, amount=0.5)
    assert result.shapes_before == {
        "features.0": (32, 1, 5, 5),
        "features.3": (64, 32, 5, 5),
        "classifier.1": (512, 3136),
        "classifier.3": (10, 512),
    }
    assert result.shapes_after == {
        "features.0": (16, 1, 5, 5),
        "features.3": (32, 16, 5, 5),
        "classifier.1": (256, 1568),
        "classifier.3": (10, 256),  # the classifier keeps its 10 outputs
    }
    assert result.parameters_after < result.parameters_before / 3.5
    assert result.model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_channel_pruning_rebuilds_groupnorm_and_keeps_whole_groups():
    model = trained_digits_cnn()
    result = prune_channels(model, amount=0.5)
    assert result.shapes_after["features.0"] == (4, 1, 3, 3)
    assert result.shapes_after["features.4"] == (8, 4, 3, 3)
    assert result.shapes_after["classifier.1"] == (10, 32)
    norms = [m for m in result.model.modules() if isinstance(m, nn.GroupNorm)]
    assert [(n.num_groups, n.num_channels) for n in norms] == [(2, 4), (4, 8)]
    assert result.model(torch.zeros(2, *INPUT_SHAPE)).shape == (2, 10)


def test_channel_pruning_keeps_the_largest_filters_and_their_weights():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 2 * 2, 3))
    with torch.no_grad():
        for c, scale in enumerate([0.1, 5.0, 0.2, 3.0]):
            model[0].weight[c].fill_(scale)
    result = prune_channels(model, amount=0.5)
    kept = result.model[0].weight[:, 0, 0, 0].tolist()
    assert kept == [5.0, 3.0]  # channels 1 and 3, in their original order
    # the linear layer reads the kept channels' flattened columns (channel c -> columns 4c..4c+3)
    assert torch.equal(result.model[3].weight, model[3].weight[:, [4, 5, 6, 7, 12, 13, 14, 15]])


def test_channel_pruning_of_nothing_changes_nothing():
    model = trained_digits_cnn()
    result = prune_channels(model, amount=0.0)
    x = digits_split()[1].x[:16]
    assert torch.allclose(result.model(torch.from_numpy(x)), model(torch.from_numpy(x)))


def test_channel_pruning_fine_tune_recovers_accuracy():
    train, test = digits_split()
    result = prune_channels(trained_digits_cnn(), amount=0.25, fine_tune=FineTune(data=train, epochs=2))
    assert evaluate(result.model, test).accuracy > 0.8


@pytest.mark.parametrize("amount", [-0.1, 1.0, 1.5, float("nan"), "half"])
def test_rejects_pruning_amounts_outside_zero_to_one(amount):
    model = build_model("digits-cnn", input_shape=INPUT_SHAPE, num_classes=10, seed=0)
    with pytest.raises(SparsityError, match=r"\[0, 1\)"):
        prune_unstructured(model, sparsity=amount)
    with pytest.raises(SparsityError, match=r"\[0, 1\)"):
        prune_channels(model, amount=amount)


def test_rejects_a_model_with_no_channels_to_remove():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))  # its only layer is the classifier
    with pytest.raises(PruningError, match="no layer whose output channels can be removed"):
        prune_channels(model, amount=0.5)
    with pytest.raises(PruningError, match="no convolution or linear layer"):
        prune_unstructured(nn.Sequential(nn.ReLU()), sparsity=0.5)


def test_parameters_counted_after_channel_pruning_match_the_model():
    result = prune_channels(build_model("tabular-mlp", input_shape=(30,), num_classes=2, seed=0), amount=0.5)
    assert result.parameters_after == count_parameters(result.model)
    assert result.shapes_after == {"net.0": (32, 30), "net.2": (16, 32), "net.4": (2, 16)}

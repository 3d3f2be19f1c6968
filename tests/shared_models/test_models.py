import numpy as np
import pytest
import torch
from opacus.validators import ModuleValidator

from shared_models.errors import ModelWidthError, UnknownModelError, WeightsMismatchError
from shared_models.models import MODELS, build_model, count_parameters, get_weights, set_weights

SHAPES = {
    "digits-cnn": (1, 8, 8),
    "digits-mlp": (1, 8, 8),
    "mnist-cnn": (1, 28, 28),
    "mnist-small-cnn": (1, 28, 28),
    "scatternet-linear": (1, 28, 28),
    "tabular-mlp": (13,),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_runs_and_is_opacus_compatible(name):
    model = build_model(name, input_shape=SHAPES[name], num_classes=7)
    out = model(torch.zeros(3, *SHAPES[name]))
    assert out.shape == (3, 7)
    assert ModuleValidator.validate(model, strict=False) == []


def test_mnist_cnn_has_the_documented_size():
    model = build_model("mnist-cnn", input_shape=(1, 28, 28), num_classes=10)
    assert 1_600_000 < count_parameters(model) < 1_700_000


def test_digits_mlp_has_the_documented_size_and_tanh():
    model = build_model("digits-mlp", input_shape=(1, 8, 8), num_classes=10)
    assert count_parameters(model) == 64 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10
    assert sum(isinstance(m, torch.nn.Tanh) for m in model.modules()) == 2


def test_small_mnist_cnn_is_an_order_of_magnitude_smaller():
    small = build_model("mnist-small-cnn", input_shape=(1, 28, 28), num_classes=10)
    assert 100_000 < count_parameters(small) < 130_000


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_built_in_builds_narrower_at_a_width_multiplier(name):
    full = build_model(name, input_shape=SHAPES[name], num_classes=7, seed=0)
    narrow = build_model(name, input_shape=SHAPES[name], num_classes=7, seed=0, width=0.4)
    assert count_parameters(narrow) < count_parameters(full) / 2
    assert narrow(torch.zeros(2, *SHAPES[name])).shape == (2, 7)
    assert ModuleValidator.validate(narrow, strict=False) == []


def test_width_one_is_the_model_as_documented():
    default = build_model("mnist-small-cnn", input_shape=(1, 28, 28), num_classes=10, seed=3)
    same = build_model("mnist-small-cnn", input_shape=(1, 28, 28), num_classes=10, seed=3, width=1.0)
    ours, theirs = default.state_dict(), same.state_dict()
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.parametrize("width", [0.0, -0.5, float("nan"), float("inf")])
def test_rejects_a_width_that_is_not_a_positive_number(width):
    with pytest.raises(ModelWidthError, match="positive number"):
        build_model("digits-cnn", input_shape=(1, 8, 8), num_classes=10, width=width)


def test_unknown_model_names_the_choices():
    with pytest.raises(UnknownModelError, match="digits-cnn"):
        build_model("resnet-9000", input_shape=(1, 8, 8), num_classes=10)


def test_model_rejects_data_of_the_wrong_shape():
    with pytest.raises(UnknownModelError, match="expects inputs of shape"):
        build_model("mnist-cnn", input_shape=(1, 8, 8), num_classes=10)


def test_weights_round_trip_exactly():
    a = build_model("digits-cnn", input_shape=(1, 8, 8), num_classes=10, seed=1)
    b = build_model("digits-cnn", input_shape=(1, 8, 8), num_classes=10, seed=2)
    x = torch.randn(4, 1, 8, 8)
    assert not torch.allclose(a(x), b(x))
    set_weights(b, get_weights(a))
    assert torch.equal(a.eval()(x), b.eval()(x))


def test_weights_from_another_model_are_refused():
    digits = build_model("digits-cnn", input_shape=(1, 8, 8), num_classes=10)
    weights = get_weights(digits)
    weights["classifier.1.weight"] = np.zeros((3, 3), dtype=np.float32)
    with pytest.raises(WeightsMismatchError, match="classifier.1.weight"):
        set_weights(digits, weights)
    mlp = build_model("tabular-mlp", input_shape=(13,), num_classes=2)
    with pytest.raises(WeightsMismatchError, match="missing"):
        set_weights(mlp, get_weights(digits))

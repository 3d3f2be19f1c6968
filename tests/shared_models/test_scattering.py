"""The fixed scattering front end and scatternet-linear: shapes, nothing trainable or sent in the front end, the
filters' defining properties, and the model's parameters."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from opacus.validators import ModuleValidator

from shared_models.errors import UnknownModelError
from shared_models.models import build_model, count_parameters
from shared_models.scattering import Scattering2d, ScatterNetLinear


@pytest.mark.parametrize(
    ("channels", "size", "J", "L", "expected"),
    [(1, (28, 28), 2, 8, (81, 7, 7)), (3, (32, 32), 2, 4, (3 * (1 + 8 + 16), 8, 8)), (1, (64, 64), 3, 2, (19, 8, 8))],
)
def test_scattering_has_one_order_zero_jl_order_one_and_l2_pairs_order_two_channels(channels, size, J, L, expected):  # noqa: N803
    front = Scattering2d(in_channels=channels, size=size, J=J, L=L)
    out = front(torch.randn(2, channels, *size))
    assert tuple(out.shape) == (2, *expected)
    assert front.out_channels == expected[0]


def test_the_front_end_has_nothing_to_train_and_nothing_in_the_state_dict():
    front = Scattering2d()
    assert list(front.parameters()) == []
    assert front.state_dict() == {}  # its filters never go over the wire: every node rebuilds the same ones
    assert len(list(front.buffers())) > 0


def test_wavelets_have_zero_mean_so_a_constant_image_has_only_an_order_zero_response():
    front = Scattering2d()
    for j in range(front.J):
        assert getattr(front, f"psi{j}").sum(dim=(1, 2, 3)).abs().max() < 1e-6
    out = front(torch.full((1, 1, 28, 28), 0.7))
    assert torch.allclose(out[:, 0], torch.full((1, 7, 7), 0.7), atol=1e-5)  # the low-pass keeps the mean
    assert out[:, 1:].abs().max() < 1e-4


def test_the_low_pass_matrix_is_the_strided_reflect_padded_gaussian():
    front = Scattering2d()
    x = torch.randn(3, 1, 28, 28)
    sigma = 0.8 * 2 ** (front.J - 1)
    taps = torch.arange(-5, 6, dtype=torch.float32)
    g = torch.exp(-(taps**2) / (2 * sigma**2))
    kernel = (g[:, None] * g[None, :]) / (g.sum() ** 2)
    expected = F.conv2d(F.pad(x, (5, 5, 5, 5), mode="reflect"), kernel[None, None], stride=4)
    assert torch.allclose(front._low_pass(x, 0), expected, atol=1e-6)


def test_features_move_little_when_the_image_shifts_by_a_pixel():
    torch.manual_seed(0)
    front = Scattering2d()
    x = F.avg_pool2d(torch.rand(1, 1, 32, 32), 3, stride=1)[..., :28, :28]
    x = x - x.mean()
    shifted = torch.roll(x, shifts=1, dims=-1)
    a, b = front(x)[..., 1:-1, 1:-1], front(shifted)[..., 1:-1, 1:-1]  # away from the rolled-over edge
    assert (a - b).norm() / a.norm() < ((x - shifted).norm() / x.norm()) / 3


def test_scatternet_linear_trains_only_its_norm_and_a_zero_started_linear_layer():
    model = build_model("scatternet-linear", input_shape=(1, 28, 28), num_classes=10)
    assert isinstance(model, ScatterNetLinear)
    assert count_parameters(model) == 81 * 7 * 7 * 10 + 10 + 2 * 81
    assert sorted(model.state_dict()) == ["classifier.bias", "classifier.weight", "norm.bias", "norm.weight"]
    assert not model.classifier.weight.any()
    assert model(torch.randn(4, 1, 28, 28)).shape == (4, 10)
    assert model.norm.num_groups == 27
    assert ModuleValidator.validate(model, strict=False) == []


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 30, 30), (64,)])
def test_scatternet_linear_refuses_inputs_it_cannot_take_naming_why(shape):
    with pytest.raises(UnknownModelError, match="scatternet-linear"):
        build_model("scatternet-linear", input_shape=shape, num_classes=10)

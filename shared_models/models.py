"""The model registry: every model fedge trains, by name.

All models are Opacus-compatible: no BatchNorm (per-sample gradients need layers whose output for one sample
does not depend on the others), GroupNorm where a normalisation layer helps.

>>> model = build_model("digits-cnn", input_shape=(1, 8, 8), num_classes=10)
>>> sum(p.numel() for p in model.parameters()) > 0
True

Every built-in also builds at a width multiplier (the students of distillation):

>>> full = build_model("mnist-small-cnn", input_shape=(1, 28, 28), num_classes=10)
>>> narrow = build_model("mnist-small-cnn", input_shape=(1, 28, 28), num_classes=10, width=0.5)
>>> count_parameters(narrow) < count_parameters(full) / 2
True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from shared_models.errors import ModelWidthError, UnknownModelError, WeightsMismatchError


class DigitsCNN(nn.Module):
    """A small CNN for scikit-learn's 8x8 digits: two 3x3 convolutions with GroupNorm, about 2,400 parameters.

    Kept small on purpose: DP-SGD's noise grows with the square root of the parameter count, and a few hundred
    samples per client leave no room for a large model at ε = 3.
    """

    def __init__(self, num_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.GroupNorm(2, width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.GroupNorm(4, 2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 2 * 2, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class DigitsMLP(nn.Module):
    """An MLP for scikit-learn's 8x8 digits: 64 -> 512 -> 512 -> 10 with tanh, about 301,000 parameters.

    Made for the demo's two ends. Under DP-SGD, tanh (bounded, smooth) trains better than ReLU at the same ε; at
    ε = 3 on two clients it reaches about 0.93 where the 1,946-parameter :class:`DigitsCNN` stops near 0.73. On the
    device, almost all of its weights sit in two large fully connected layers: int8 stores them in a quarter of
    the bytes and runs them faster than float in both onnxruntime and XNNPACK (which are not faster on int8
    convolutions on an AVX2 CPU, see :mod:`edge.export.narrow_conv`), where a model of a few thousand parameters
    is all graph and call overhead and int8 only adds quantize nodes.
    """

    def __init__(self, num_classes: int = 10, hidden: int = 512, in_features: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden),
            nn.Tanh(),
            nn.Linear(hidden, hidden),
            nn.Tanh(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MnistCNN(nn.Module):
    """The classic MNIST CNN: Conv32(5x5) - pool - Conv64(5x5) - pool - FC512 - FC10, 1.66M parameters."""

    def __init__(self, num_classes: int = 10, width: int = 32, hidden: int = 512) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * 7 * 7, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class TabularMLP(nn.Module):
    """An MLP for tabular data (a hospital's table): two hidden layers."""

    def __init__(self, num_features: int, num_classes: int = 2, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(num_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden // 2),
            nn.ReLU(),
            nn.Linear(hidden // 2, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass(frozen=True)
class ModelSpec:
    """How to build one registered model, and the input it expects (``None`` where any size fits).

    ``build(input_shape, num_classes, width)`` builds it at a width multiplier (``1.0``: the model as documented;
    ``0.4``: 40% of the channels and hidden units, as distillation's students use); ``scalable`` says whether
    ``build`` honours a width other than 1.
    """

    name: str
    description: str
    build: Callable[[tuple[int, ...], int, float], nn.Module]
    input_shape: tuple[int, ...] | None
    scalable: bool = True


def _scaled(base: int, width: float, *, even: bool = False) -> int:
    """``base`` channels or units at ``width``, at least 1 (at least 2 and even where GroupNorm halves them)."""
    if even:
        return max(2, 2 * int(round(base * width / 2)))
    return max(1, round(base * width))


def _build_digits(input_shape: tuple[int, ...], num_classes: int, width: float) -> nn.Module:
    return DigitsCNN(num_classes, width=_scaled(8, width, even=True))  # GroupNorm(2, w) and GroupNorm(4, 2w)


def _build_digits_mlp(input_shape: tuple[int, ...], num_classes: int, width: float) -> nn.Module:
    return DigitsMLP(num_classes, hidden=_scaled(512, width), in_features=math.prod(input_shape))


def _mnist_builder(channels: int, hidden: int) -> Callable[[tuple[int, ...], int, float], nn.Module]:
    def build(input_shape: tuple[int, ...], num_classes: int, width: float) -> nn.Module:
        return MnistCNN(num_classes, width=_scaled(channels, width), hidden=_scaled(hidden, width))

    return build


def _build_scatternet_linear(input_shape: tuple[int, ...], num_classes: int, width: float) -> nn.Module:
    from shared_models.scattering import ScatterNetLinear

    if len(input_shape) != 3 or input_shape[1] % 4 or input_shape[2] % 4:
        raise UnknownModelError(
            f"scatternet-linear takes images (channels, height, width) whose height and width are multiples of 4, got "
            f"input shape {input_shape}; use tabular-mlp for flat features"
        )
    try:  # its width: the scattering's orientations (8 at width 1), which set the number of feature channels
        return ScatterNetLinear(input_shape, num_classes, L=_scaled(8, width))
    except ValueError as e:
        raise UnknownModelError(
            f"scatternet-linear takes images of 16x16 or more (its scattering has J = 2, fixed), got input shape "
            f"{input_shape}: its filters reach 8 pixels; use a CNN such as digits-cnn for smaller images"
        ) from e


def _build_tabular(input_shape: tuple[int, ...], num_classes: int, width: float) -> nn.Module:
    if len(input_shape) != 1:
        raise UnknownModelError(
            f"tabular-mlp takes flat feature vectors, got input shape {input_shape}; "
            "use a CNN (digits-cnn, mnist-cnn) for images"
        )
    return TabularMLP(input_shape[0], num_classes, hidden=_scaled(64, width, even=True))


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("digits-cnn", "small CNN for 8x8 digits (GroupNorm)", _build_digits, (1, 8, 8)),
        ModelSpec(
            "digits-mlp",
            "64-512-512-10 tanh MLP for 8x8 digits (301K parameters): the DP demo's model, int8-friendly on devices",
            _build_digits_mlp,
            (1, 8, 8),
        ),
        ModelSpec("mnist-cnn", "Conv32-Conv64-FC512 CNN for 28x28 MNIST", _mnist_builder(32, 512), (1, 28, 28)),
        ModelSpec(
            "mnist-small-cnn",
            "Conv16-Conv32-FC64 CNN for 28x28 MNIST (114K parameters): DP-SGD's noise grows with the parameter count",
            _mnist_builder(16, 64),
            (1, 28, 28),
        ),
        ModelSpec(
            "scatternet-linear",
            "fixed wavelet-scattering features + GroupNorm + a linear layer (Tramer & Boneh 2021; 39.9K parameters "
            "on 28x28 MNIST): DP-SGD's best at small ε, the dp_utility benchmark's model",
            _build_scatternet_linear,
            None,
        ),
        ModelSpec("tabular-mlp", "MLP for tabular features (CSV, breast cancer)", _build_tabular, None),
    )
}


def get_model_spec(name: str) -> ModelSpec:
    """Look a model up by name; an unknown name raises :class:`UnknownModelError` listing the choices."""
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))}") from None


def build_model(
    name: str,
    *,
    input_shape: Sequence[int],
    num_classes: int,
    seed: int | None = None,
    width: float = 1.0,
) -> nn.Module:
    """Build a registered model for inputs of ``input_shape`` (without the batch dimension), at ``width`` times its
    channels and hidden units (a model whose spec is not ``scalable`` takes only ``width=1``)."""
    spec = get_model_spec(name)
    shape = tuple(int(d) for d in input_shape)
    if spec.input_shape is not None and shape != spec.input_shape:
        raise UnknownModelError(
            f"model {name!r} expects inputs of shape {spec.input_shape}, but the data has shape {shape}; "
            f"pick a model that fits the data set ({', '.join(sorted(MODELS))})"
        )
    width = float(width)
    if not (math.isfinite(width) and width > 0):
        raise ModelWidthError(f"the width multiplier must be a positive number, got {width!r}; 1 is the model as is")
    if width != 1.0 and not spec.scalable:
        scalable = ", ".join(sorted(n for n, s in MODELS.items() if s.scalable))
        raise ModelWidthError(
            f"model {name!r} cannot be built at a width multiplier; build it at width 1 or pick one that can "
            f"({scalable})"
        )
    if seed is not None:
        torch.manual_seed(seed)
    return spec.build(shape, num_classes, width)


# The built-ins as factories with the contract's signature (shared_models/registry.py maps each name to one):
# ``factory(input_shape, num_classes, width=1.0)``. A model registered in MODELS by name only gets one through
# the module's __getattr__ (``shared_models.models:its_name``).


def digits_cnn(input_shape: tuple[int, ...], num_classes: int, width: float = 1.0) -> nn.Module:
    return build_model("digits-cnn", input_shape=input_shape, num_classes=num_classes, width=width)


def digits_mlp(input_shape: tuple[int, ...], num_classes: int, width: float = 1.0) -> nn.Module:
    return build_model("digits-mlp", input_shape=input_shape, num_classes=num_classes, width=width)


def mnist_cnn(input_shape: tuple[int, ...], num_classes: int, width: float = 1.0) -> nn.Module:
    return build_model("mnist-cnn", input_shape=input_shape, num_classes=num_classes, width=width)


def mnist_small_cnn(input_shape: tuple[int, ...], num_classes: int, width: float = 1.0) -> nn.Module:
    return build_model("mnist-small-cnn", input_shape=input_shape, num_classes=num_classes, width=width)


def scatternet_linear(input_shape: tuple[int, ...], num_classes: int, width: float = 1.0) -> nn.Module:
    return build_model("scatternet-linear", input_shape=input_shape, num_classes=num_classes, width=width)


def tabular_mlp(input_shape: tuple[int, ...], num_classes: int, width: float = 1.0) -> nn.Module:
    return build_model("tabular-mlp", input_shape=input_shape, num_classes=num_classes, width=width)


def _named_factory(name: str) -> Callable[..., nn.Module]:
    def factory(input_shape: tuple[int, ...], num_classes: int, width: float = 1.0) -> nn.Module:
        return build_model(name, input_shape=input_shape, num_classes=num_classes, width=width)

    factory.__name__ = factory.__qualname__ = name.replace("-", "_")
    return factory


def __getattr__(attribute: str) -> Callable[..., nn.Module]:
    for name in MODELS:
        if name.replace("-", "_") == attribute:
            return _named_factory(name)
    raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def get_weights(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's state as named NumPy arrays (copies, on the CPU)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def set_weights(model: nn.Module, weights: dict[str, np.ndarray]) -> None:
    """Load named arrays into ``model``; any missing, extra or misshapen tensor raises :class:`WeightsMismatchError`."""
    state = model.state_dict()
    missing = sorted(set(state) - set(weights))
    extra = sorted(set(weights) - set(state))
    if missing or extra:
        raise WeightsMismatchError(
            f"arrays do not match the model: missing {missing or 'none'}, unexpected {extra or 'none'}; "
            "were they saved from a different model?"
        )
    new_state = {}
    for key, value in state.items():
        array = np.asarray(weights[key])
        if tuple(array.shape) != tuple(value.shape):
            raise WeightsMismatchError(
                f"array {key!r} has shape {tuple(array.shape)} but the model expects {tuple(value.shape)}; "
                "were they saved from a different model or a different input size?"
            )
        new_state[key] = torch.as_tensor(array, dtype=value.dtype)
    model.load_state_dict(new_state)

"""A fixed wavelet-scattering front end, built from plain torch convolutions: data-independent features for DP-SGD.

Tramèr & Boneh, "Differentially Private Learning Needs Better Features (or Much More Data)", ICLR 2021: a linear
model (or a small CNN) trained with DP-SGD on the scattering transform of the images (Oyallon & Mallat's ScatterNet,
``J = 2`` scales, ``L = 8`` orientations) beats end-to-end CNNs at the same ε, because the features cost no privacy
(they are fixed: nothing is learned from the data) and the model that is learned is small and easy to train.

This is the second-order scattering transform written as convolutions with fixed Morlet filters (their real and
imaginary parts as output channels), a complex modulus and a Gaussian low-pass with stride ``2**J``:

- order 0: ``x * phi``
- order 1: ``|x * psi(j, θ)| * phi`` for ``j < J`` and ``L`` orientations
- order 2: ``||x * psi(j1, θ1)| * psi(j2, θ2)| * phi`` for ``j1 < j2 < J``

``1 + J L + L² J (J - 1) / 2`` channels per input channel (81 for ``J = 2``, ``L = 8``) at ``1 / 2**J`` of the input's
height and width. The filters follow kymatio's Morlet definition (a Gabor wavelet minus its mean, ``σ = 0.8 2^j``,
``ξ = 3π / (4 2^j)``, slant 0.5), sampled in space and truncated rather than applied in Fourier. They are
buffers, not parameters (``persistent=False``): nothing for an optimizer or Opacus to train, nothing in the
``state_dict`` that goes over the wire, and the same filters are rebuilt wherever the model is built. Everything is
``pad`` (reflect), ``conv2d`` and elementwise arithmetic, so the model exports to ONNX and TFLite like any CNN.

>>> front = Scattering2d(in_channels=1, J=2, L=8)
>>> tuple(front(torch.zeros(2, 1, 28, 28)).shape), len(list(front.parameters()))
((2, 81, 7, 7), 0)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def gabor_2d(size: int, sigma: float, theta: float, xi: float, slant: float = 1.0) -> np.ndarray:
    """A complex Gabor filter of ``size x size`` taps centred on the middle tap, normalised as kymatio's."""
    half = size // 2
    ys, xs = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    curv = rot @ np.diag([1.0, slant**2]) @ rot.T / (2 * sigma**2)
    envelope = np.exp(-(curv[0, 0] * xs**2 + (curv[0, 1] + curv[1, 0]) * xs * ys + curv[1, 1] * ys**2))
    wave = np.exp(1j * (xs * math.cos(theta) + ys * math.sin(theta)) * xi)
    return envelope * wave / (2 * math.pi * sigma**2 / slant)


def morlet_2d(size: int, sigma: float, theta: float, xi: float, slant: float) -> np.ndarray:
    """A Morlet wavelet: the Gabor filter minus a multiple of its envelope, so that its taps sum to zero."""
    gabor = gabor_2d(size, sigma, theta, xi, slant)
    envelope = gabor_2d(size, sigma, theta, 0.0, slant)
    return gabor - envelope * (gabor.sum() / envelope.sum())


def _per_channel(x: torch.Tensor, conv: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``conv`` (one input channel to k) applied to each channel of ``x`` on its own: ``(N, C, H, W)`` ->
    ``(N, C k, H', W')``. The channels go into the batch: one dense convolution, which torch runs several times faster
    on a CPU than the same work as a grouped (depthwise) one."""
    n, c = x.shape[:2]
    out = conv(x.reshape(n * c, 1, *x.shape[2:]))
    return out.reshape(n, c * out.shape[1], *out.shape[2:])


class Scattering2d(nn.Module):
    """The fixed scattering transform (orders 0, 1 and 2) of images of ``in_channels`` channels.

    Inputs of ``size`` (height, width), both multiples of ``2**J``. No trainable parameters.
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        size: tuple[int, int] = (28, 28),
        J: int = 2,  # noqa: N803 (the papers' names)
        L: int = 8,  # noqa: N803
    ) -> None:
        super().__init__()
        height, width = size
        if J < 1 or L < 1 or height % 2**J or width % 2**J:
            raise ValueError(
                f"scattering needs J >= 1, L >= 1 and a height and width that are multiples of 2**J, got J={J}, "
                f"L={L}, size {height}x{width}"
            )
        self.in_channels, self.size, self.J, self.L = in_channels, (height, width), J, L
        slant = 0.5  # kymatio's 4 / L at its usual L = 8, kept for any L so the filters' support stays the same
        self.sizes: list[int] = []
        for j in range(J):
            sigma = 0.8 * 2**j
            taps = 2 * math.ceil(2.5 * sigma / slant) + 1  # 2.5 sigma along the wavelet's long axis
            bank = [
                morlet_2d(taps, sigma, (int(L - L / 2 - 1) - t) * math.pi / L, 3.0 / 4.0 * math.pi / 2**j, slant)
                for t in range(L)
            ]
            bank = [w / np.abs(w).sum() for w in bank]  # unit L1 norm: |x * psi| <= max |x|
            # real and imaginary parts as channels: [re θ0, im θ0, re θ1, ...], shape (2L, 1, taps, taps)
            weights = np.stack([part for w in bank for part in (w.real, w.imag)])[:, None].astype(np.float32)
            self.register_buffer(f"psi{j}", torch.from_numpy(weights), persistent=False)
            self.sizes.append(taps)
        for j in range(J):  # the low-pass for maps kept every 2**j pixels: sigma 0.8 * 2**(J - 1) input pixels
            phi_sigma = 0.8 * 2 ** (J - 1 - j)
            phi = gabor_2d(2 * math.ceil(3 * phi_sigma) + 1, phi_sigma, 0.0, 0.0).real
            phi = (phi / phi.sum()).astype(np.float32)[None, None]
            # as a matrix from the (H / 2**j) x (W / 2**j) map to the (H / 2**J) x (W / 2**J) output
            h, w = height // 2**j, width // 2**j
            basis = torch.eye(h * w).reshape(h * w, 1, h, w)
            pad = phi.shape[-1] // 2
            matrix = F.conv2d(F.pad(basis, (pad,) * 4, mode="reflect"), torch.from_numpy(phi), stride=2 ** (J - j))
            self.register_buffer(f"low_pass{j}", matrix.reshape(h * w, -1), persistent=False)
        try:
            self(torch.zeros(1, in_channels, height, width))
        except RuntimeError as e:  # reflect padding needs a map larger than the filter's half-width
            raise ValueError(
                f"images of {height}x{width} are too small for scattering at J={J}: its filters reach "
                f"{self.sizes[-1] // 2} pixels; use a smaller J or larger images"
            ) from e

    @property
    def out_channels(self) -> int:
        J, L = self.J, self.L  # noqa: N806
        return self.in_channels * (1 + J * L + L * L * J * (J - 1) // 2)

    def _wavelet_modulus(self, x: torch.Tensor, j: int, *, stride: int) -> torch.Tensor:
        """``|x * psi(j, θ)|`` for every channel of ``x`` and every orientation (``L`` maps per input channel),
        sampled every ``stride`` pixels."""
        pad = self.sizes[j] // 2
        out = _per_channel(
            x, lambda maps: F.conv2d(F.pad(maps, (pad,) * 4, mode="reflect"), getattr(self, f"psi{j}"), stride=stride)
        )
        out = out.unflatten(1, (x.shape[1] * self.L, 2))
        return torch.sqrt(out[:, :, 0] ** 2 + out[:, :, 1] ** 2 + 1e-12)

    def _low_pass(self, x: torch.Tensor, j: int) -> torch.Tensor:
        """``x * phi`` sampled every ``2**J`` input pixels, for maps already sampled every ``2**j``: one matrix
        product with the strided, reflect-padded convolution written as a matrix."""
        n, c = x.shape[:2]
        out = x.reshape(n, c, -1) @ getattr(self, f"low_pass{j}")
        return out.reshape(n, c, self.size[0] // 2**self.J, self.size[1] // 2**self.J)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # As kymatio does, |x * psi(j)| is kept every 2**j pixels: its modulus holds nothing finer.
        by_scale: list[list[torch.Tensor]] = [[x]] + [[] for _ in range(self.J - 1)]
        first = [self._wavelet_modulus(x, j, stride=2**j) for j in range(self.J)]
        for j1, u1 in enumerate(first):
            by_scale[j1].append(u1)
            for j2 in range(j1 + 1, self.J):
                by_scale[j2].append(self._wavelet_modulus(u1, j2, stride=2 ** (j2 - j1)))
        return torch.cat([self._low_pass(torch.cat(maps, dim=1), j) for j, maps in enumerate(by_scale)], dim=1)


class ScatterNetLinear(nn.Module):
    """Tramèr & Boneh's ScatterNet + linear model: the fixed :class:`Scattering2d` front end, a GroupNorm of its
    channels (per sample, so it spends no privacy; groups of 3 channels as in the paper) and one linear layer,
    started at zero. Only the linear layer and the GroupNorm's scale and shift are trained: 39,862 parameters for
    28x28 MNIST (81 x 7 x 7 features, 10 classes).
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, *, J: int = 2, L: int = 8) -> None:  # noqa: N803
        super().__init__()
        channels, height, width = input_shape
        self.scattering = Scattering2d(in_channels=channels, size=(height, width), J=J, L=L)
        features = self.scattering.out_channels
        self.norm = nn.GroupNorm(features // 3 if features % 3 == 0 else 1, features)
        self.classifier = nn.Linear(features * (height // 2**J) * (width // 2**J), num_classes)
        nn.init.zeros_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.norm(self.scattering(x)).flatten(1))

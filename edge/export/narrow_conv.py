"""Why the TFLite int8 MNIST CNN was slower than float, and the rewrite that fixes it.

XNNPACK (the CPU delegate ``ai-edge-litert`` applies by default) runs int8 convolutions with microkernels that
read the input channels 8 at a time (``c8`` packing) at every kernel tap. A first convolution over a 1-channel image
(``Conv2d(1, 32, 5)``, lowered to ``DEPTHWISE_CONV_2D`` with a channel multiplier of 32) pads each of its 25 taps
from 1 channel to 8: eight times the work, and on a 2-core AVX2 machine that one layer took 0.19 ms in int8
against 0.03 ms in float32 - more than int8 saved everywhere else (the float kernels have no such padding).

The rewrite stacks the kernel's rows into channels: pad the input, take the ``kh`` row-shifted copies
(``SLICE``), concatenate them on the channel axis, and convolve with a ``(1, kw)`` kernel over ``kh * cin``
channels. The weights are the same numbers rearranged, so the output is identical (to float rounding); the int8
kernel now pads ``kh * cin`` = 5 channels to 8 at 5 taps instead of 1 to 8 at 25, and the layer runs 3x faster.
Only convolutions with fewer than 8 input channels, no groups, dilation 1 and numeric padding are rewritten.

What the rewrite cannot fix: on x86 with AVX2 but no VNNI, XNNPACK's int8 convolution kernels multiply 16-bit
sign-extended values and run at about the rate of its float kernels, so a compute-bound layer (the MNIST CNN's
``Conv2d(32, 64, 5)``: 10M multiply-adds) is no faster in int8; int8 wins on memory-bound layers (the 3136x512
fully connected layer at batch 1 runs 4x faster). ``simulations/benchmarks/compress_export.py`` times each layer
alone to show it. onnxruntime's int8 kernels (u8 x s8 ``vpmaddubsw``) do gain on AVX2.

What was tried to make that convolution faster in int8, each timed alone (``Conv2d(32, 64, 5)`` + ReLU + pool,
1 thread, batch 1, interleaved with its fp32 ``.tflite`` in the same run on the 2-core AMD EPYC Zen3, AVX2 and FMA,
no AVX-512 or VNNI; int8 / fp32 latency, the whole model in brackets, against 0.96x (0.83x) for the plain layer):

- row-stacked like the first convolution (a ``(1, 5)`` convolution over 160 channels): 0.91x (0.81x);
- fully unrolled (25 ``SLICE`` + ``CONCATENATION``, then a 1x1 ``CONV_2D`` over 800 channels): 1.03x (0.87x);
- the same patches into ``FULLY_CONNECTED``: 1.31x (1.02x) - the same GEMM kernel, and the quantizer leaves what
  follows the reshape back to NCHW (ReLU, pooling) in float; patches by ``index_select`` become ``GATHER_ND``,
  which XNNPACK does not take: 7.5x. ``torch.matmul`` (``BATCH_MATMUL``) stays float: the PT2E quantizer
  annotates only convolutions, linear layers, add and pooling;
- per-tensor weights: 0.95x (0.83x); uint8 activations: the converter writes UINT8 tensors with zero point -128,
  which XNNPACK refuses; int16 activations x int8 weights: not delegated, 21x;
- ``Interpreter(experimental_default_delegate_latest_features=True)``: 0.95x (0.83x); without the delegate (ruy):
  2.1x (2.0x).

``perf`` shows why: every int8 variant runs ``xnn_qs8_qc8w_igemm`` (or ``_gemm``) ``_3x8c8__avx2``, 12
``vpmaddwd`` and 7 ``vpmovsxbw`` per 192 multiply-adds, against ``xnn_f32_igemm_5x16__fma3`` in float. XNNPACK's
unsigned-by-signed (``vpmaddubsw``) kernels on AVX2 exist only for 4- and 2-bit weights (``qc4w``/``qc2w``, fully
connected layers): with 8-bit weights a pair of products can overflow int16, which XNNPACK does not risk and
onnxruntime does. So even if every other layer cost nothing, int8 would stay at about 0.74x the float model
(conv2 270 us + fc1 40 us + fc2 2 us against 421 us); 0.6x needs a faster kernel (AVX-VNNI, or 4-bit weights).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

NARROW_CHANNELS = 8


class RowStackedConv2d(nn.Module):
    """A ``Conv2d`` computed as a ``(1, kw)`` convolution over its input's ``kh`` row-shifted copies."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        out_channels, in_channels, kh, kw = conv.weight.shape
        self.kernel_height = kh
        self.stride_height = conv.stride[0]
        self.pad_height, self.pad_width = conv.padding  # type: ignore[misc]
        self.conv = nn.Conv2d(
            kh * in_channels, out_channels, (1, kw), stride=(1, conv.stride[1]), bias=conv.bias is not None
        )
        with torch.no_grad():
            # new channel index = row * in_channels + c, matching the concatenation order in forward()
            self.conv.weight.copy_(conv.weight.permute(0, 2, 1, 3).reshape(out_channels, kh * in_channels, 1, kw))
            if conv.bias is not None:
                self.conv.bias.copy_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (self.pad_width, self.pad_width, self.pad_height, self.pad_height))
        rows_out = (x.shape[2] - self.kernel_height) // self.stride_height + 1
        span = (rows_out - 1) * self.stride_height + 1
        shifted = [x[:, :, i : i + span : self.stride_height, :] for i in range(self.kernel_height)]
        return self.conv(torch.cat(shifted, dim=1))


def _rewritable(module: nn.Module) -> bool:
    return (
        type(module) is nn.Conv2d
        and module.in_channels < NARROW_CHANNELS
        and module.groups == 1
        and module.dilation == (1, 1)
        and module.padding_mode == "zeros"
        and isinstance(module.padding, tuple)
        and module.kernel_size[0] > 1
    )


def stack_rows_of_narrow_convs(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """A copy of ``model`` with every narrow convolution replaced by :class:`RowStackedConv2d`; and their names."""
    rewritten = copy.deepcopy(model).eval()
    names = [name for name, module in rewritten.named_modules() if name and _rewritable(module)]
    for name in names:
        rewritten.set_submodule(name, RowStackedConv2d(rewritten.get_submodule(name)))
    return rewritten, names

"""TFLite export with ``litert-torch`` (PyTorch straight to ``.tflite``, no TensorFlow), at four precisions:

- ``fp32``: float32 weights and kernels;
- ``fp16``: float16 weights, dequantized to float32 at load time (half the file, float speed);
- ``dynamic``: dynamic range, int8 weights with activations quantized on the fly (PT2E quantizer, ``is_dynamic``);
- ``int8``: full integer: int8 weights and activations, int8 input and output (PT2E quantizer calibrated on real
  samples); narrow first convolutions are rewritten first (see :mod:`edge.export.narrow_conv`).

The model is traced at batch 1 (what a device runs). Needs the ``fedge[tflite]`` extra.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edge.agent.errors import FedgeError
from edge.compress.calibration import CalibrationSet
from edge.compress.errors import CalibrationError, MissingExtraError
from edge.compress.quantize import prepare_pt2e
from edge.export.errors import ExportError, UnknownFormatError
from edge.export.failures import export_failure
from edge.export.narrow_conv import stack_rows_of_narrow_convs
from edge.export.variants import FORMAT_PRECISIONS

TFLITE_PRECISIONS = FORMAT_PRECISIONS["tflite"]


def _litert_torch() -> Any:
    # torchao (imported by litert-torch) logs a warning per optional CUDA kernel it cannot load on a CPU machine,
    # and torch one about an Enum it registers: neither concerns an export, both would clutter the console.
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import litert_torch
    except ImportError as e:
        raise MissingExtraError("TFLite export needs litert-torch: pip install 'fedge[tflite]'") from e
    litert_torch.config.show_progress = False
    return litert_torch


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Swallow the converter's C++ log lines (written straight to file descriptor 2) while it runs."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


#: Layers litert-torch's PT2E quantizer cannot take at a precision (checked with litert-torch 0.10: a GRU's int8
#: quantization fails inside the converter with "list index out of range"; an LSTM's works).
UNQUANTIZABLE = {"int8": (nn.GRU,)}


def refuse_unquantizable(model: nn.Module, precision: str) -> None:
    """Refuse, naming the layer and what works instead, a model the TFLite converter cannot quantize."""
    for name, module in model.named_modules():
        if isinstance(module, UNQUANTIZABLE.get(precision, ())):
            raise ExportError(
                f"TFLite {precision} cannot be built for this model: litert-torch's quantizer does not handle "
                f"{type(module).__name__} (layer {name!r}). Build it as ONNX int8 (-f onnx) or TFLite fp32/fp16 "
                f"(-V fp32 -V fp16), or use an LSTM or a 1-D convolution instead"
            )


def export_tflite(
    model: nn.Module,
    path: str | Path,
    *,
    input_shape: tuple[int, ...],
    precision: str = "fp32",
    calibration: CalibrationSet | None = None,
    rewrite_narrow_convs: bool = True,
) -> dict[str, Any]:
    """Convert ``model`` to a ``.tflite`` file at ``path``; return what was done (for the artifact's manifest)."""
    if precision not in TFLITE_PRECISIONS:
        raise UnknownFormatError(
            f"unknown TFLite precision {precision!r}; choose one of: {', '.join(TFLITE_PRECISIONS)}"
        )
    if precision == "int8" and calibration is None:
        raise CalibrationError("full-integer int8 needs calibration samples: the server's held-out split or a file")
    refuse_unquantizable(model, precision)
    litert_torch = _litert_torch()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    example = (torch.zeros((1, *input_shape)),)
    info: dict[str, Any] = {"precision": precision, "converter": f"litert-torch {litert_torch.__version__}"}
    source = model
    try:
        with warnings.catch_warnings(), _quiet_native_stderr():
            warnings.simplefilter("ignore")
            if precision == "fp32":
                edge_model = litert_torch.convert(model, example)
            elif precision == "fp16":
                from litert_torch.generative.quantize import quant_recipes

                edge_model = litert_torch.convert(model, example, quant_config=quant_recipes.full_fp16_recipe())
                info.update(weights="float16", activations="float32")
            else:
                if precision == "int8" and rewrite_narrow_convs:
                    source, rewritten = stack_rows_of_narrow_convs(model)
                    info["rewritten-layers"] = rewritten
                graph, quant_config = prepare_pt2e(
                    source, input_shape=tuple(input_shape), mode=precision, calibration=calibration
                )
                edge_model = litert_torch.convert(graph, example, quant_config=quant_config)
                if precision == "int8":
                    info.update(
                        weights="int8 (per channel, symmetric)",
                        activations="int8",
                        scheme="pt2e static",
                        calibration="histogram",
                        **{"calibration-samples": len(calibration)},
                    )
                else:
                    info.update(weights="int8 (per channel, symmetric)", activations="float32", scheme="pt2e dynamic")
            content = bytes(edge_model.model_content())
    except FedgeError:
        raise
    except Exception as e:
        raise export_failure(source, example, e, target="TFLite") from e
    if not content:
        raise ExportError("litert-torch produced an empty model")
    path.write_bytes(content)
    return info

"""Quantization: ONNX int8 by ``onnxruntime.quantization``, TFLite int8 by ``litert-torch``'s PT2E quantizer.

ONNX:

- ``static``: QDQ format (QuantizeLinear/DequantizeLinear pairs around every quantized op, what onnxruntime fuses
  into integer kernels), int8 weights per output channel, int8 activations whose ranges come from running a
  :class:`CalibrationSet` of real samples through the float model (min/max). Input and output stay float.
- ``dynamic``: int8 weights of the matrix multiplications, activations quantized on the fly at run time; no
  calibration. Convolutions are left in float: onnxruntime's dynamic ConvInteger kernel is slower than float.

TFLite (``prepare_pt2e``): ``torch.export`` the model, annotate it with ``litert-torch``'s :class:`PT2EQuantizer`
(symmetric int8, per-channel weights), calibrate the observers on the samples, and hand the converted graph and
its :class:`QuantConfig` to ``litert_torch.convert``, which emits full-integer kernels with int8 input and output.
``dynamic`` asks the same quantizer for dynamic-range (int8 weights, float activations).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edge.compress.calibration import CalibrationSet
from edge.compress.errors import CalibrationError, CompressError, MissingExtraError

ONNX_MODES = ("static", "dynamic")
PT2E_MODES = ("int8", "dynamic")


def _onnx_input(model_path: Path) -> tuple[str, tuple[int | str, ...]]:
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    inp = model.graph.input[0]
    dims = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in inp.type.tensor_type.shape.dim)
    return inp.name, dims


class _Reader:
    """onnxruntime's CalibrationDataReader over a :class:`CalibrationSet`, one sample per call."""

    def __init__(self, input_name: str, calibration: CalibrationSet) -> None:
        self.input_name = input_name
        self.calibration = calibration
        self._it: Iterator[np.ndarray] = calibration.samples()

    def get_next(self) -> dict[str, np.ndarray] | None:
        sample = next(self._it, None)
        return None if sample is None else {self.input_name: sample}

    def rewind(self) -> None:
        self._it = self.calibration.samples()


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime.quantization logs through the root logger ("Axis 1 is out-of-range for weight ..." when a 1-D
    weight cannot be quantized per channel and falls back to per tensor); keep those lines out of the console."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _check_fits(calibration: CalibrationSet, dims: tuple[int | str, ...], what: str) -> None:
    if not isinstance(calibration, CalibrationSet) or len(calibration) == 0:
        raise CalibrationError(f"static quantization of {what} needs a non-empty calibration set of real samples")
    expected = tuple(dims[1:])
    if len(expected) != len(calibration.input_shape) or any(
        isinstance(e, int) and e > 0 and e != c for e, c in zip(expected, calibration.input_shape, strict=False)
    ):
        raise CalibrationError(
            f"the calibration samples have shape {calibration.input_shape} but {what} takes {expected}"
        )


def quantize_onnx(
    float_model: str | Path,
    out: str | Path,
    *,
    mode: str = "static",
    calibration: CalibrationSet | None = None,
    per_channel: bool = True,
) -> dict[str, Any]:
    """Quantize the float ONNX file ``float_model`` into ``out``; return the settings used (for the manifest)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    float_model, out = Path(float_model), Path(out)
    if mode not in ONNX_MODES:
        raise CompressError(f"unknown ONNX quantization mode {mode!r}; choose one of: {', '.join(ONNX_MODES)}")
    input_name, dims = _onnx_input(float_model)
    with tempfile.TemporaryDirectory(prefix="fedge-quant-") as tmp, _quiet_root_logger():
        prepared = Path(tmp) / "prepared.onnx"
        try:  # symbolic shape inference and graph optimisation, as onnxruntime recommends before quantizing
            quant_pre_process(str(float_model), str(prepared), skip_symbolic_shape=False)
        except Exception:  # a model the pre-processor cannot handle is quantized as exported
            prepared = float_model
        if mode == "dynamic":
            quantize_dynamic(
                str(prepared),
                str(out),
                weight_type=QuantType.QInt8,
                per_channel=per_channel,
                op_types_to_quantize=["MatMul", "Gemm"],
            )
            return {
                "mode": "dynamic",
                "weights": "int8",
                "activations": "float (quantized at run time)",
                "per-channel": per_channel,
                "ops": ["MatMul", "Gemm"],
            }
        if calibration is None:
            raise CalibrationError(
                "static int8 quantization needs calibration samples: pass the server's held-out split or a file"
            )
        _check_fits(calibration, dims, f"the ONNX model {float_model.name}")
        quantize_static(
            str(prepared),
            str(out),
            _Reader(input_name, calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    return {
        "mode": "static",
        "format": "QDQ",
        "weights": "int8",
        "activations": "int8",
        "per-channel": per_channel,
        "calibration": "min-max",
        "calibration-samples": len(calibration),
        "calibration-source": calibration.source,
    }


def _litert() -> Any:
    try:
        from litert_torch.quantize import pt2e_quantizer, quant_config
    except ImportError as e:
        raise MissingExtraError("TFLite export and quantization need litert-torch: pip install 'fedge[tflite]'") from e
    return pt2e_quantizer, quant_config


def prepare_pt2e(
    model: nn.Module,
    *,
    input_shape: tuple[int, ...],
    mode: str = "int8",
    calibration: CalibrationSet | None = None,
    per_channel: bool = True,
) -> tuple[torch.fx.GraphModule, Any]:
    """Quantize ``model`` with litert-torch's PT2E quantizer; return (converted graph, ``QuantConfig``) for
    ``litert_torch.convert(graph, sample, quant_config=...)``. The graph is traced at batch 1."""
    from torchao.quantization.pt2e import quantize_pt2e

    pt2e_quantizer, quant_config = _litert()
    if mode not in PT2E_MODES:
        raise CompressError(f"unknown PT2E quantization mode {mode!r}; choose one of: {', '.join(PT2E_MODES)}")
    dynamic = mode == "dynamic"
    if not dynamic:
        if calibration is None:
            raise CalibrationError(
                "full-integer int8 needs calibration samples: pass the server's held-out split or a file"
            )
        _check_fits(calibration, (1, *input_shape), "the model")
    example = (torch.zeros((1, *input_shape)),)
    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=per_channel, is_dynamic=dynamic)
    )
    graph = torch.export.export(model.eval(), example).module()
    prepared = quantize_pt2e.prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        if dynamic:
            prepared(*example)
        else:
            for sample in calibration.samples():
                prepared(torch.from_numpy(sample))
    converted = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
    return converted, quant_config.QuantConfig(pt2e_quantizer=quantizer)

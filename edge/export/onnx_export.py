"""ONNX export: ``torch.onnx.export(..., dynamo=True)`` with a dynamic batch dimension, one self-contained file,
checked by ``onnx.checker`` (full check: the graph, its types and shape inference).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from edge.export.errors import ExportError
from edge.export.failures import export_failure

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def check_onnx(path: str | Path) -> None:
    """``onnx.checker`` full check of the file at ``path``; a failure raises :class:`ExportError`."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # onnx raises ValidationError, InferenceError, ...
        raise ExportError(f"the ONNX file {path} fails onnx.checker's full check: {e}") from e


def export_onnx(model: nn.Module, path: str | Path, *, input_shape: tuple[int, ...], opset: int | None = None) -> Path:
    """Export ``model`` (inputs of ``input_shape``, no batch dimension) to one ``.onnx`` file with a dynamic batch.

    The graph's input is ``input`` (float32, ``[batch, *input_shape]``) and its output ``logits``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    example = (torch.zeros((2, *input_shape)),)
    batch = torch.export.Dim("batch", min=1, max=65536)
    kwargs = {"opset_version": opset} if opset is not None else {}
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping ..." on every export
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                example,
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},),
                external_data=False,
                verbose=False,
                **kwargs,
            )
            program.save(str(path), external_data=False)
    except Exception as e:
        raise export_failure(model, example, e, target="ONNX") from e
    finally:
        exporter_log.setLevel(level)
    check_onnx(path)
    return path

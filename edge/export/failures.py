"""Turn an exporter's failure into an error that names the layer: which module, which op, which format.

Both exporters start from ``torch.export``. When one fails on an op it cannot translate, its message names the
op (``aten._linalg_svd.default``, ``mylib.op.default``) but not the layer; the exported graph knows which module
each node came from (``nn_module_stack``), so the op is looked up there and the layer's path and class reported.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import nn

from edge.export.errors import ExportError, UnsupportedLayerError


def _error_text(error: BaseException) -> str:
    parts, seen = [], set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts.append(f"{type(current).__name__}: {current}")
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


def _graphs(model: nn.Module, example: tuple[torch.Tensor, ...]) -> Iterable[torch.fx.Graph]:
    try:
        program = torch.export.export(model.eval(), example)
    except Exception:  # the model cannot even be traced: nothing to look the op up in
        return
    yield program.graph
    try:
        yield program.run_decompositions().graph
    except Exception:
        return


def _layer_of(node: torch.fx.Node) -> tuple[str, str] | None:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    path, cls = list(stack.values())[-1]
    path = re.sub(r"^L\['self'\]\.?", "", str(path))
    name = cls.__name__ if isinstance(cls, type) else str(cls).rsplit(".", 1)[-1].rstrip("'>")
    return path or "(the model itself)", name


def find_failing_layer(
    model: nn.Module, example: tuple[torch.Tensor, ...], error: BaseException
) -> tuple[str, str, str] | None:
    """(layer path, layer class, op) for the op named in ``error``, or None when no op of the graph is named."""
    text = _error_text(error)
    for graph in _graphs(model, example):
        for node in graph.nodes:
            if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
                continue
            op = str(node.target)  # e.g. aten._linalg_svd.default
            packet = op.rsplit(".", 1)[0]
            if op in text or re.search(re.escape(packet) + r"(?![\w])", text):
                layer = _layer_of(node)
                if layer is not None:
                    return layer[0], layer[1], op
    return None


def export_failure(
    model: nn.Module, example: tuple[torch.Tensor, ...], error: BaseException, *, target: str
) -> ExportError:
    """The error to raise when exporting ``model`` to ``target`` (ONNX, TFLite) failed with ``error``."""
    found = find_failing_layer(model, example, error)
    if found is not None:
        path, cls, op = found
        return UnsupportedLayerError(
            f"cannot export the model to {target}: layer '{path}' ({cls}) uses the op {op}, which {target} has no "
            f"translation for; replace that layer with supported ops (or remove it) and export again"
        )
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ExportError(f"cannot export the model to {target}: {type(error).__name__}: {first[:500]}")

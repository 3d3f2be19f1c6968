"""Export a model to what an edge device runs (ONNX, TFLite), and prove each artifact faithful to the float model.

:func:`package_model` is the one entry point that compresses, exports, verifies, times and reports; the parts are
usable alone (:func:`export_onnx`, :func:`export_tflite`, :func:`open_artifact`, :func:`verify_artifact`).
"""

from __future__ import annotations

import importlib
from typing import Any

# The public names and the module that holds each. They are imported on first use, so ``edge.export.cli`` (the
# ``fedge package`` command) can be imported, and ``fedge --help`` shown, without torch.
_WHERE = {
    **dict.fromkeys(
        ("CheckpointError", "ExportError", "UnknownFormatError", "UnsupportedLayerError", "VerificationError"),
        "edge.export.errors",
    ),
    **dict.fromkeys(("check_onnx", "export_onnx"), "edge.export.onnx_export"),
    **dict.fromkeys(
        ("PackageInputs", "PackageOptions", "PackageResult", "package_model", "parse_variant"), "edge.export.package"
    ),
    **dict.fromkeys(("measure_latency", "open_artifact"), "edge.export.runtime"),
    "export_tflite": "edge.export.tflite_export",
    **dict.fromkeys(("Verification", "verify_artifact"), "edge.export.verify"),
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'edge.export' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)

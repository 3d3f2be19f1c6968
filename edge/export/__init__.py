"""Export a model to what an edge device runs (ONNX, TFLite), and prove each artifact faithful to the float model.

:func:`package_model` is the one entry point that compresses, exports, verifies, times and reports; the parts are
usable alone (:func:`export_onnx`, :func:`export_tflite`, :func:`open_artifact`, :func:`verify_artifact`).
"""

from edge.export.errors import (
    CheckpointError,
    ExportError,
    UnknownFormatError,
    UnsupportedLayerError,
    VerificationError,
)
from edge.export.onnx_export import check_onnx, export_onnx
from edge.export.package import PackageInputs, PackageOptions, PackageResult, package_model, parse_variant
from edge.export.runtime import measure_latency, open_artifact
from edge.export.tflite_export import export_tflite
from edge.export.verify import Verification, verify_artifact

__all__ = [
    "CheckpointError",
    "ExportError",
    "PackageInputs",
    "PackageOptions",
    "PackageResult",
    "UnknownFormatError",
    "UnsupportedLayerError",
    "Verification",
    "VerificationError",
    "check_onnx",
    "export_onnx",
    "export_tflite",
    "measure_latency",
    "open_artifact",
    "package_model",
    "parse_variant",
    "verify_artifact",
]

"""Make a trained model smaller: pruning (unstructured and channel), quantization helpers and distillation.

Everything here works on a PyTorch model and data the caller supplies; the formats a device runs come from
:mod:`edge.export`. ``litert-torch`` (the ``fedge[tflite]`` extra) is imported only where it is needed.
"""

from edge.compress.calibration import CalibrationSet
from edge.compress.distill import DistillationResult, distill, make_student
from edge.compress.errors import (
    CalibrationError,
    CompressError,
    DistillationError,
    MissingExtraError,
    PruningError,
    SparsityError,
)
from edge.compress.pruning import FineTune, PruningResult, prune_channels, prune_unstructured, sparsity_of

__all__ = [
    "CalibrationError",
    "CalibrationSet",
    "CompressError",
    "DistillationError",
    "DistillationResult",
    "FineTune",
    "MissingExtraError",
    "PruningError",
    "PruningResult",
    "SparsityError",
    "distill",
    "make_student",
    "prune_channels",
    "prune_unstructured",
    "sparsity_of",
]

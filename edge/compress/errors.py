"""The errors raised by ``edge.compress``: each says what was asked, why it cannot be done, and what to do."""

from __future__ import annotations

from edge.agent.errors import FedgeError


class CompressError(FedgeError):
    """Base of the errors raised while pruning, quantizing or distilling a model."""


class SparsityError(CompressError):
    """A pruning amount outside [0, 1)."""


class PruningError(CompressError):
    """A model whose structure the pruner cannot shrink (no prunable layer, a layer it does not know)."""


class CalibrationError(CompressError):
    """Calibration data that cannot calibrate a quantizer: missing, empty, unreadable or of the wrong shape."""


class DistillationError(CompressError):
    """A student that cannot be built or trained (unknown model, bad temperature or alpha, no data)."""


class MissingExtraError(CompressError):
    """An optional dependency (an extra such as ``fedge[tflite]``) that is not installed."""

"""The errors raised by ``edge.export``: each says what was asked, why it cannot be done, and what to do."""

from __future__ import annotations

from edge.agent.errors import FedgeError


class ExportError(FedgeError):
    """Base of the errors raised while exporting, verifying or packaging a model."""


class CheckpointError(ExportError):
    """A run directory without a usable model: no ``model.pt`` / ``model.json``, or weights that do not fit."""


class UnknownFormatError(ExportError):
    """An artifact format or variant the exporter does not know."""


class UnsupportedLayerError(ExportError):
    """A layer of the model that the target format cannot express; the message names the layer and its op."""


class VerificationError(ExportError):
    """An artifact that cannot be loaded or run by its runtime, or test data that does not fit it."""

"""Errors raised by the ClientApp."""

from __future__ import annotations

from shared_models.errors import FedgeError


class ClientError(FedgeError):
    """Base of the errors raised by ``client``."""


class ClientConfigError(ClientError):
    """A run or node setting the client cannot use."""


class PrivacyBudgetExhaustedError(ClientError):
    """The next round of training would spend more than the client's privacy budget (target epsilon)."""


class ModelNotPrivateError(ClientError):
    """A model with layers Opacus cannot train with DP-SGD (BatchNorm, nn.LSTM, ...) and no fix asked for, or one
    that cannot be made private at all."""


class AcceptanceOnNodeError(ClientError):
    """This node cannot run the acceptance test of the artifacts (``fedge accept RUN_DIR --superlink``): artifact
    bytes that are not the ones the server described, a file no device runtime runs, a missing runtime."""

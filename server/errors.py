"""Errors raised by the ServerApp."""

from __future__ import annotations

from shared_models.errors import FedgeError


class ServerError(FedgeError):
    """Base of the errors raised by ``server``."""


class ServerConfigError(ServerError):
    """A run setting the server cannot use (unknown strategy, bad fraction, ...)."""

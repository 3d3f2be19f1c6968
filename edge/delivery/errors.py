"""Errors raised by ``edge.delivery`` (the server side of edge delivery).

They derive from :class:`~edge.agent.errors.FedgeError`, fedge's root error, which lives in the torch-free bottom
layer ``edge.agent.errors`` (so edge delivery needs no ``shared_models``), and the ``fedge`` command shows them as
one clear line. The agent's own errors (``AgentError``, a ``FedgeError`` too), which the server side meets when it
reads an artifact or a key with the agent's checks, are re-raised as :class:`DeliveryError` (or a subclass naming
what the server was doing) by :func:`as_delivery_error`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from edge.agent.errors import AgentError, FedgeError


class DeliveryError(FedgeError):
    """Base of the errors raised by ``edge.delivery``."""


class KeyFileError(DeliveryError):
    """A signing key that is missing, unreadable, or not an Ed25519 key."""


class ArtifactError(DeliveryError):
    """A model file that cannot be published: missing, unknown format, too large, bad metadata."""


class BrokerError(DeliveryError):
    """A broker that cannot be reached, started or configured."""


class RolloutError(DeliveryError):
    """A rollout that cannot go on: no devices, no canary reported in time."""


@contextlib.contextmanager
def as_delivery_error(kind: type[DeliveryError] | None = None) -> Iterator[None]:
    """Re-raise the agent's errors as ``kind`` (DeliveryError by default), so they read as the server's."""
    try:
        yield
    except AgentError as e:
        raise (kind or DeliveryError)(str(e)) from e

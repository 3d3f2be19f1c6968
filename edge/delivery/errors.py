"""Errors raised by ``edge.delivery`` (the server side of edge delivery).

They derive from :class:`~shared_models.errors.FedgeError` (``shared_models.errors`` imports nothing heavy), so the
``fedge`` command shows them as one clear line. Errors from the agent's own family (``edge.agent.errors``), which
the server side meets when it reads an artifact or a key with the agent's checks, are re-raised as
:class:`DeliveryError` by :func:`as_delivery_error`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from edge.agent.errors import AgentError
from shared_models.errors import FedgeError


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
    """Re-raise the agent's errors (not FedgeErrors, by design) as ``kind`` (DeliveryError by default)."""
    try:
        yield
    except AgentError as e:
        raise (kind or DeliveryError)(str(e)) from e

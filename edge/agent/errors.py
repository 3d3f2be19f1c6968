"""The root of fedge's exception family, and the device agent's own errors.

:class:`FedgeError` is defined here, at the bottom layer (standard library only), because this module is in every
install, the device's ``fedge[agent]`` included: the agent must not import ``shared_models`` (nor torch), and the
server side of edge delivery needs no torch either. ``shared_models.errors`` re-exports it, so
``from shared_models.errors import FedgeError`` keeps working for the server, the clients and the commands; every
error fedge raises on purpose derives from it, so the ``fedge`` command shows its message (what happened, why, and
the fix) as one line instead of a traceback.

The agent's errors derive from :class:`AgentError`, a :class:`FedgeError`. The server side (``edge.delivery``) still
turns an ``AgentError`` it meets (a malformed artifact, a bad key) into its own ``DeliveryError`` where it wants to
say what the server was doing; ``python -m edge.agent`` shows the agent's errors as one line too.

Every rejection of an update is a :class:`RejectedUpdateError` with a short machine-readable ``reason`` (reported to
the server in the update outcome) and a human message.
"""

from __future__ import annotations


class FedgeError(Exception):
    """Base of every error fedge raises on purpose."""


class AgentError(FedgeError):
    """Base of every error the device agent raises on purpose."""


class AgentConfigError(AgentError):
    """A setting the agent cannot run with: bad broker URL, missing trusted key, unknown runtime, bad data file."""


class ModelStoreError(AgentError):
    """The model store on disk cannot be read or written."""


class ModelRuntimeError(AgentError):
    """A model that does not load or run in the chosen runtime (onnxruntime or LiteRT)."""


class RejectedUpdateError(AgentError):
    """An update (manifest, chunk or command) the agent refuses; ``reason`` names the check that failed."""

    reason = "rejected"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class MalformedMessageError(RejectedUpdateError):
    reason = "malformed"


class UnknownTopicError(RejectedUpdateError):
    reason = "unknown-topic"


class OversizedPayloadError(RejectedUpdateError):
    reason = "oversized"


class UnsignedManifestError(RejectedUpdateError):
    reason = "unsigned"


class UnknownSignerError(RejectedUpdateError):
    reason = "unknown-signer"


class BadSignatureError(RejectedUpdateError):
    reason = "bad-signature"


class ExpiredManifestError(RejectedUpdateError):
    reason = "expired"


class RollbackError(RejectedUpdateError):
    reason = "rollback"


class FormatMismatchError(RejectedUpdateError):
    reason = "format"


class TamperedChunkError(RejectedUpdateError):
    reason = "tampered-chunk"


class TruncatedModelError(RejectedUpdateError):
    reason = "truncated"


class HashMismatchError(RejectedUpdateError):
    reason = "hash-mismatch"


class TransferTimeoutError(RejectedUpdateError):
    reason = "timeout"


class ModelLoadError(RejectedUpdateError):
    reason = "does-not-load"


class StaleCommandError(RejectedUpdateError):
    """A command that does not apply to the model the device runs now (an old command replayed)."""

    reason = "stale-command"


class NotAddressedError(RejectedUpdateError):
    """A manifest for another device or group, for a model id this device does not run, or of the old format that
    names no target."""

    reason = "not-addressed"


class RevokedSignerError(RejectedUpdateError):
    """Signed by a key the root's key set revoked."""

    reason = "revoked-signer"


class PreviousModelError(RejectedUpdateError):
    """A rollback refused because the previous model is damaged or does not load (the current one keeps serving)."""

    reason = "previous-unusable"

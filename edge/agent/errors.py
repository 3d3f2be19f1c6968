"""The device agent's own exception family.

The rest of fedge derives its errors from ``shared_models.errors.FedgeError``, but the agent runs on a device that
installs only ``fedge[agent]`` (no torch) and must not import ``shared_models`` at all, so it has a base of its
own, :class:`AgentError`. The server side (``edge.delivery``) turns an ``AgentError`` it meets (a malformed
artifact, a bad key) into its own ``DeliveryError``, a ``FedgeError``, so the ``fedge`` command still shows one
clear line instead of a traceback; ``python -m edge.agent`` does the same for its own errors.

Every rejection of an update is a :class:`RejectedUpdateError` with a short machine-readable ``reason`` (reported to
the server in the update outcome) and a human message.
"""

from __future__ import annotations


class AgentError(Exception):
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

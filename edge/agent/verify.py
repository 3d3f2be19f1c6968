"""The verification core: checks on manifests, commands and chunks, with no I/O (python-tuf's design).

Everything here takes bytes and the current time and either returns a checked object or raises a
:class:`~edge.agent.errors.RejectedUpdateError` that names the failed check. The agent feeds it what arrives over
MQTT; the tests feed it attacks directly, without a network.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Collection, Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.agent.config import AgentLimits
from edge.agent.errors import (
    AgentConfigError,
    BadSignatureError,
    ExpiredManifestError,
    FormatMismatchError,
    HashMismatchError,
    MalformedMessageError,
    NotAddressedError,
    OversizedPayloadError,
    RevokedSignerError,
    RollbackError,
    TamperedChunkError,
    TransferTimeoutError,
    TruncatedModelError,
    UnknownSignerError,
    UnsignedManifestError,
)
from edge.agent.protocol import Command, KeySet, Manifest, canonical_json, keyid_of, load_json_object

TrustedKeys = Mapping[str, Ed25519PublicKey]


def load_public_key(pem: bytes) -> tuple[str, Ed25519PublicKey]:
    """Read an Ed25519 public key (PEM, as ``fedge keygen`` writes it); return ``(keyid, key)``."""
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as e:
        raise AgentConfigError(f"not a PEM public key: {e}") from e
    if not isinstance(key, Ed25519PublicKey):
        raise AgentConfigError("the trusted key must be an Ed25519 public key (make one with `fedge keygen`)")
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return keyid_of(raw), key


def verify_envelope(
    payload: bytes,
    *,
    trusted: TrustedKeys,
    max_bytes: int,
    what: str,
    revoked: Collection[str] = (),
    expired: Collection[str] = (),
) -> dict[str, Any]:
    """Check size, JSON shape and the Ed25519 signature of a signed envelope; return its ``signed`` part.

    One valid signature by a trusted key is enough; signatures by unknown keys are ignored, and an envelope whose
    only signatures are by unknown keys is refused as ``unknown-signer`` (``revoked-signer`` when a key in
    ``revoked`` signed it: a revoked key is never trusted, whatever else lists it).
    """
    if len(payload) > max_bytes:
        raise OversizedPayloadError(f"{what} of {len(payload)} bytes is over the limit of {max_bytes}")
    envelope = load_json_object(payload, what)
    signed = envelope.get("signed")
    if not isinstance(signed, dict):
        raise MalformedMessageError(f"{what}: no 'signed' object")
    signatures = envelope.get("signatures")
    if not signatures:
        raise UnsignedManifestError(f"{what} carries no signature")
    if not isinstance(signatures, list) or not all(isinstance(s, dict) for s in signatures):
        raise MalformedMessageError(f"{what}: 'signatures' must be a list of objects")
    try:
        message = canonical_json(signed)
    except (TypeError, ValueError) as e:
        raise MalformedMessageError(f"{what}: 'signed' cannot be canonicalised: {e}") from e
    keyids = [s.get("keyid") for s in signatures]
    known = [s for s in signatures if isinstance(s.get("keyid"), str) and s["keyid"] in trusted]
    known = [s for s in known if s["keyid"] not in revoked]
    if not known:
        if any(isinstance(k, str) and k in revoked for k in keyids):
            raise RevokedSignerError(f"{what} is signed by a revoked key")
        if any(isinstance(k, str) and k in expired for k in keyids):
            raise ExpiredManifestError(
                f"{what} is signed by a key that only an expired key set vouches for: publish a fresh key set "
                "(fedge keys rotate)"
            )
        raise UnknownSignerError(f"{what} is not signed by a trusted key")
    for sig in known:
        try:
            raw = base64.b64decode(str(sig.get("sig", "")), validate=True)
            trusted[sig["keyid"]].verify(raw, message)
            return signed
        except (InvalidSignature, binascii.Error, ValueError):
            continue
    raise BadSignatureError(f"{what}: the signature does not match its contents")


def check_manifest(
    manifest: Manifest, *, limits: AgentLimits, now: float, floor_version: int, model_format: str
) -> Manifest:
    """The checks on an authentic manifest: expiry (freeze), sizes, format, and version (rollback).

    ``floor_version`` is the highest version this device ever accepted (0 for none): a version not above it is a
    rollback (or a replay) and is refused, even after a commanded rollback to an older model.
    """
    if manifest.expires <= now:
        raise ExpiredManifestError(
            f"manifest of {manifest.model_id} v{manifest.version} expired at {manifest.expires} (now {int(now)})"
        )
    if manifest.issued > now + limits.clock_skew_s:
        raise MalformedMessageError(f"manifest issued in the future ({manifest.issued}, now {int(now)})")
    if manifest.length > limits.max_model_bytes:
        raise OversizedPayloadError(
            f"model of {manifest.length} bytes is over the limit of {limits.max_model_bytes} bytes"
        )
    if manifest.chunk_size > limits.max_chunk_bytes:
        raise OversizedPayloadError(f"chunk size {manifest.chunk_size} is over the limit of {limits.max_chunk_bytes}")
    if manifest.format != model_format:
        raise FormatMismatchError(f"a {manifest.format} model cannot run on this {model_format} agent")
    if manifest.version <= floor_version:
        raise RollbackError(
            f"version {manifest.version} is not newer than {floor_version}, the newest this device accepted"
        )
    return manifest


def check_addressed(manifest: Manifest, *, device_id: str, group: str | None, model_ids: Collection[str]) -> Manifest:
    """The manifest is for this device (its id among the targets, or its group) and for a model it runs."""
    if not manifest.addressed_to(device_id, group):
        to = ", ".join(manifest.targets[:5]) + ("..." if len(manifest.targets) > 5 else "")
        if manifest.group:
            to = f"{to}; group {manifest.group}" if to else f"group {manifest.group}"
        raise NotAddressedError(f"manifest of {manifest.model_id} v{manifest.version} is for {to}, not {device_id}")
    if manifest.model_id not in model_ids:
        raise NotAddressedError(
            f"manifest is for model {manifest.model_id!r}; this device runs {', '.join(sorted(model_ids))}"
        )
    return manifest


def read_manifest(
    payload: bytes,
    *,
    trusted: TrustedKeys,
    limits: AgentLimits,
    revoked: Collection[str] = (),
    expired: Collection[str] = (),
) -> Manifest:
    """Authenticate a manifest envelope and validate its schema (no policy checks yet)."""
    signed = verify_envelope(
        payload,
        trusted=trusted,
        max_bytes=limits.max_manifest_bytes,
        what="manifest",
        revoked=revoked,
        expired=expired,
    )
    return Manifest.from_signed(signed)


def verify_manifest(
    payload: bytes,
    *,
    trusted: TrustedKeys,
    limits: AgentLimits,
    now: float,
    floor_version: int,
    model_format: str,
    device_id: str | None = None,
    group: str | None = None,
    model_ids: Collection[str] | None = None,
) -> Manifest:
    """Every check on a manifest before any chunk is accepted: :func:`read_manifest`, :func:`check_addressed`
    (when ``device_id`` is given) and :func:`check_manifest`."""
    manifest = read_manifest(payload, trusted=trusted, limits=limits)
    if device_id is not None:
        check_addressed(
            manifest, device_id=device_id, group=group, model_ids=model_ids if model_ids is not None else ()
        )
    return check_manifest(manifest, limits=limits, now=now, floor_version=floor_version, model_format=model_format)


def verify_command(
    payload: bytes,
    *,
    trusted: TrustedKeys,
    limits: AgentLimits,
    now: float,
    device_id: str,
    name: str,
    revoked: Collection[str] = (),
) -> Command:
    """Check a signed command addressed to this device on the topic of its name."""
    signed = verify_envelope(
        payload, trusted=trusted, max_bytes=limits.max_command_bytes, what="command", revoked=revoked
    )
    command = Command.from_signed(signed)
    if command.command != name or command.device_id != device_id:
        raise MalformedMessageError(f"command {command.command!r} for {command.device_id!r} on the wrong topic")
    if command.expires <= now:
        raise ExpiredManifestError(f"command {command.command!r} expired at {command.expires}")
    return command


def verify_keyset(
    payload: bytes, *, root: TrustedKeys, limits: AgentLimits, now: float | None, current_version: int
) -> KeySet:
    """Check a key set: signed by the root, newer than ``current_version`` (a replayed older set is a rollback) and
    not expired (``now`` None skips the expiry: a stored set accepted before is re-read after a restart)."""
    signed = verify_envelope(payload, trusted=root, max_bytes=limits.max_keyset_bytes, what="key set")
    keyset = KeySet.from_signed(signed)
    if keyset.version <= current_version:
        raise RollbackError(f"key set v{keyset.version} is not newer than v{current_version}, the one this device has")
    if now is not None and keyset.expires <= now:
        raise ExpiredManifestError(f"key set v{keyset.version} expired at {keyset.expires} (now {int(now)})")
    return keyset


class TrustedSigners:
    """The signing keys a device trusts: the ones it was given directly, plus those of the newest root-signed key
    set, minus every key that set revoked. No I/O: the agent stores the accepted key set itself."""

    def __init__(self, direct: TrustedKeys, *, root: TrustedKeys | None = None) -> None:
        self.direct = dict(direct)
        self.root = dict(root or {})
        self.keyset: KeySet | None = None
        self.keys: dict[str, Ed25519PublicKey] = dict(self.direct)
        self.revoked: frozenset[str] = frozenset()

    @property
    def keyset_version(self) -> int:
        return self.keyset.version if self.keyset else 0

    def keys_at(self, now: float) -> TrustedKeys:
        """The signing keys trusted at ``now``. A key set past its expiry lends none of its keys (the direct keys
        stay): without a fresh, root-signed set, a stolen signing key cannot stay in force by freezing the device
        on an old set. Revoked keys stay revoked."""
        if self.keyset is not None and now > self.keyset.expires:
            return {k: v for k, v in self.direct.items() if k not in self.revoked}
        return self.keys

    def expired_keyset_signers(self, now: float) -> frozenset[str]:
        """The key ids that only an expired key set vouches for (none while the set is current)."""
        if self.keyset is None or now <= self.keyset.expires:
            return frozenset()
        return frozenset(self.keyset.keys) - frozenset(self.direct)

    def accept(self, payload: bytes, *, limits: AgentLimits, now: float | None) -> KeySet:
        """Take a new key set if it passes :func:`verify_keyset`; raise (and change nothing) otherwise."""
        if not self.root:
            raise UnknownSignerError("key set arrived but this device trusts no root key (--trust-root)")
        keyset = verify_keyset(payload, root=self.root, limits=limits, now=now, current_version=self.keyset_version)
        keys = dict(self.direct)
        for keyid, raw in keyset.keys.items():
            keys[keyid] = Ed25519PublicKey.from_public_bytes(raw)
        self.keyset, self.revoked = keyset, frozenset(keyset.revoked)
        self.keys = {k: v for k, v in keys.items() if k not in self.revoked}
        return keyset


_ONNX_FIRST_BYTES = (0x08,)  # ModelProto field 1 (ir_version), varint


def check_format(data: bytes, fmt: str) -> None:
    """A cheap look at the bytes: a TFLite flatbuffer says ``TFL3`` at offset 4; an ONNX protobuf starts with
    its ``ir_version`` field. (The agent also loads the model before swapping to it.)"""
    if fmt == "tflite" and data[4:8] != b"TFL3":
        raise FormatMismatchError("the model is not a TFLite flatbuffer (no TFL3 identifier)")
    if fmt == "onnx" and (not data or data[0] not in _ONNX_FIRST_BYTES):
        raise FormatMismatchError("the model is not an ONNX protobuf")


class ChunkAssembler:
    """Collects the chunks of one accepted manifest and hands back the model once every check has passed.

    Each chunk must have the exact length and sha256 the signed manifest lists; chunks may come in any order and
    more than once (QoS 1 redelivers). The whole file is checked again (length, sha256, format) at the end.
    """

    def __init__(self, manifest: Manifest, *, started: float, limits: AgentLimits) -> None:
        self.manifest = manifest
        self.started = started
        self.limits = limits
        self._chunks: dict[int, bytes] = {}

    @property
    def received(self) -> int:
        return len(self._chunks)

    @property
    def complete(self) -> bool:
        return len(self._chunks) == self.manifest.chunks

    def add(self, index: int, data: bytes) -> bool:
        """Add one chunk; return whether the model is complete."""
        m = self.manifest
        if not 0 <= index < m.chunks:
            raise TamperedChunkError(f"chunk {index} is out of range (the manifest lists {m.chunks})")
        expected = m.chunk_length(index)
        if len(data) > self.limits.max_chunk_bytes or len(data) > expected:
            raise OversizedPayloadError(f"chunk {index} has {len(data)} bytes, {expected} expected")
        if len(data) < expected:
            raise TruncatedModelError(f"chunk {index} has {len(data)} bytes, {expected} expected")
        if hashlib.sha256(data).hexdigest() != m.chunk_sha256[index]:
            raise TamperedChunkError(f"chunk {index} does not match its sha256 in the signed manifest")
        self._chunks[index] = bytes(data)
        return self.complete

    def check_timeout(self, now: float) -> None:
        if now - self.started > self.limits.transfer_timeout_s:
            raise TransferTimeoutError(
                f"transfer of v{self.manifest.version} timed out with {self.received} of "
                f"{self.manifest.chunks} chunks after {self.limits.transfer_timeout_s:.0f} s"
            )

    def result(self) -> bytes:
        m = self.manifest
        if not self.complete:
            raise TruncatedModelError(f"only {self.received} of {m.chunks} chunks arrived")
        data = b"".join(self._chunks[i] for i in range(m.chunks))
        if len(data) != m.length:
            raise TruncatedModelError(f"the model has {len(data)} bytes, the manifest says {m.length}")
        if hashlib.sha256(data).hexdigest() != m.sha256:
            raise HashMismatchError("the model's sha256 does not match the signed manifest")
        check_format(data, m.format)
        return data

"""The verification core: checks on manifests, commands and chunks, with no I/O (python-tuf's design).

Everything here takes bytes and the current time and either returns a checked object or raises a
:class:`~edge.agent.errors.RejectedUpdateError` that names the failed check. The agent feeds it what arrives over
MQTT; the tests feed it attacks directly, without a network.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
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
    OversizedPayloadError,
    RollbackError,
    TamperedChunkError,
    TransferTimeoutError,
    TruncatedModelError,
    UnknownSignerError,
    UnsignedManifestError,
)
from edge.agent.protocol import Command, Manifest, canonical_json, keyid_of, load_json_object

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


def verify_envelope(payload: bytes, *, trusted: TrustedKeys, max_bytes: int, what: str) -> dict[str, Any]:
    """Check size, JSON shape and the Ed25519 signature of a signed envelope; return its ``signed`` part.

    One valid signature by a trusted key is enough; signatures by unknown keys are ignored, and an envelope whose
    only signatures are by unknown keys is refused as ``unknown-signer``.
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
    known = [s for s in signatures if isinstance(s.get("keyid"), str) and s["keyid"] in trusted]
    if not known:
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


def read_manifest(payload: bytes, *, trusted: TrustedKeys, limits: AgentLimits) -> Manifest:
    """Authenticate a manifest envelope and validate its schema (no policy checks yet)."""
    signed = verify_envelope(payload, trusted=trusted, max_bytes=limits.max_manifest_bytes, what="manifest")
    return Manifest.from_signed(signed)


def verify_manifest(
    payload: bytes,
    *,
    trusted: TrustedKeys,
    limits: AgentLimits,
    now: float,
    floor_version: int,
    model_format: str,
) -> Manifest:
    """Every check on a manifest before any chunk is accepted: :func:`read_manifest` then :func:`check_manifest`."""
    manifest = read_manifest(payload, trusted=trusted, limits=limits)
    return check_manifest(manifest, limits=limits, now=now, floor_version=floor_version, model_format=model_format)


def verify_command(
    payload: bytes, *, trusted: TrustedKeys, limits: AgentLimits, now: float, device_id: str, name: str
) -> Command:
    """Check a signed command addressed to this device on the topic of its name."""
    signed = verify_envelope(payload, trusted=trusted, max_bytes=limits.max_command_bytes, what="command")
    command = Command.from_signed(signed)
    if command.command != name or command.device_id != device_id:
        raise MalformedMessageError(f"command {command.command!r} for {command.device_id!r} on the wrong topic")
    if command.expires <= now:
        raise ExpiredManifestError(f"command {command.command!r} expired at {command.expires}")
    return command


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

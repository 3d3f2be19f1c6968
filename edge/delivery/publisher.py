"""Publishing a model: read the artifact, build and sign its manifest, send the chunks and assign it to devices.

An artifact is a model file (``.onnx`` or ``.tflite``) and, optionally, a JSON file beside it (``NAME.onnx.json``
or ``NAME.json``) as ``edge.export`` writes it. From that JSON the publisher reads ``model_id``, ``version`` and
``meta`` (anything small: accuracy, quantization, input shape, the run it came from); the command line can set or
override each. From ``edge.export``'s description it also takes the device preprocessing and the lineage (run,
compression recipe, acceptance, privacy statement), which go into the signed part of the manifest. The chunks are
retained on the model's topics (so a device that accepts the manifest later, or reconnects mid-transfer, still gets
them) and the signed manifest is retained on each assigned device's topic.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.agent.protocol import (
    FORMATS,
    KEYS_TOPIC,
    Command,
    Manifest,
    canonical_json,
    check_id,
    check_lineage,
    command_topic,
    format_of,
    manifest_for,
    manifest_topic,
    split_chunks,
)
from edge.agent.verify import check_format
from edge.delivery.client import ServerClient
from edge.delivery.errors import ArtifactError, as_delivery_error
from edge.delivery.keys import SigningKey

DEFAULT_CHUNK_SIZE = 128 * 1024
DEFAULT_EXPIRES_S = 7 * 24 * 3600
COMMAND_EXPIRES_S = 3600
MAX_META_BYTES = 8 * 1024


@dataclass(frozen=True)
class Artifact:
    path: Path
    data: bytes
    model_id: str
    version: int
    format: str
    meta: dict[str, Any] = field(default_factory=dict)
    #: the description's ``source.device-preprocessing``: goes into the signed manifest, the device applies it
    preprocessing: dict[str, Any] = field(default_factory=dict)
    #: the description's ``lineage`` (run, recipe, acceptance, privacy statement): goes into the signed manifest
    lineage: dict[str, Any] = field(default_factory=dict)
    #: the description as ``edge.export`` wrote it (empty for a bare model file)
    description: dict[str, Any] = field(default_factory=dict)


def _sidecar(path: Path) -> dict[str, Any]:
    for candidate in (path.with_name(path.name + ".json"), path.with_suffix(".json")):
        if candidate.exists():
            try:
                data = json.loads(candidate.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise ArtifactError(f"cannot read the artifact's metadata {candidate}: {e}") from e
            if not isinstance(data, dict):
                raise ArtifactError(f"{candidate} must hold a JSON object")
            return data
    return {}


#: the schema prefix of the description ``edge.export`` writes beside each artifact (``NAME.onnx.json``)
EXPORT_SCHEMA = "fedge-artifact/"


def _export_summary(side: dict[str, Any]) -> dict[str, Any]:
    metrics = side.get("metrics") if isinstance(side.get("metrics"), dict) else {}
    source = side.get("source") if isinstance(side.get("source"), dict) else {}
    summary = {
        "model": side.get("model"),
        "variant": side.get("variant"),
        "dtype": side.get("dtype"),
        "size_bytes": side.get("size-bytes"),
        "accuracy": metrics.get("accuracy"),
        "latency_ms": metrics.get("latency-ms"),
        "run_id": source.get("run-id"),
    }
    return {k: v for k, v in summary.items() if v is not None}


#: the most a manifest's preprocessing and lineage may take together (a device's manifest limit is 64 KiB)
MAX_SIGNED_EXTRAS_BYTES = 32 * 1024


def _export_extras(side: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(device preprocessing, lineage) of an ``edge.export`` description: the lineage ``fedge accept`` completed
    (with the acceptance report's hash and verdict), else the run's lineage ``fedge package`` recorded."""
    source = side.get("source") if isinstance(side.get("source"), dict) else {}
    preprocessing = source.get("device-preprocessing") or {}
    lineage = side.get("lineage") or source.get("lineage") or {}
    if not isinstance(preprocessing, dict) or not isinstance(lineage, dict):
        raise ArtifactError("the artifact's description has a device-preprocessing or lineage that is not an object")
    return preprocessing, lineage


def derive_model_id(name: str) -> str:
    """A topic id for a model name: a built-in name as it is (``digits-cnn``), a user's import path made one
    (``iot_sensors.task:build_model`` -> ``iot-sensors-task-build-model``). ``--model-id`` overrides it.

    >>> derive_model_id("iot_sensors.task:build_model"), derive_model_id("digits-cnn")
    ('iot-sensors-task-build-model', 'digits-cnn')
    """
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:64].rstrip("-")


def load_artifact(path: Path, *, model_id: str | None = None, version: int | None = None) -> Artifact:
    """Read a model file and its metadata. Without a version anywhere, the version is the current Unix time, which
    keeps versions increasing (devices refuse any version not newer than theirs)."""
    path = Path(path)
    fmt = format_of(path)
    if fmt is None:
        raise ArtifactError(f"{path}: a model file must end in {' or '.join(FORMATS.values())}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ArtifactError(f"cannot read the artifact {path}: {e}") from e
    side = _sidecar(path)
    if side.get("format", fmt) != fmt:
        raise ArtifactError(f"{path}: its metadata says format {side['format']!r}")
    exported = str(side.get("schema", "")).startswith(EXPORT_SCHEMA)
    if model_id is None:
        model_id = side.get("model_id")
    if model_id is None and exported and side.get("model"):  # one lineage: the variant goes in the meta
        model_id = derive_model_id(str(side["model"]))
    model_id = model_id or derive_model_id(path.stem.split(".")[0])
    version = version if version is not None else side.get("version", int(time.time()))
    preprocessing: dict[str, Any] = {}
    lineage: dict[str, Any] = {}
    if exported:  # edge.export's description is large (quantization parameters...): carry only the summary
        meta = _export_summary(side)
        preprocessing, lineage = _export_extras(side)
        if side.get("sha256") and side["sha256"] != hashlib.sha256(data).hexdigest():
            raise ArtifactError(
                f"{path}: its bytes are not the ones its description names (sha256 differs): package it again "
                "(fedge package) rather than editing the file"
            )
    else:
        meta = side.get("meta", {k: v for k, v in side.items() if k not in ("model_id", "version", "format")})
    with as_delivery_error(ArtifactError):
        check_id("model id", model_id)
        check_format(data, fmt)
        check_lineage(lineage, f"{path}'s lineage")
    if not isinstance(version, int) or version < 1:
        raise ArtifactError(f"{path}: version must be a positive integer, got {version!r}")
    if not isinstance(meta, dict) or len(canonical_json(meta)) > MAX_META_BYTES:
        raise ArtifactError(f"{path}: metadata must be a JSON object of at most {MAX_META_BYTES} bytes")
    if len(canonical_json({"p": preprocessing, "l": lineage})) > MAX_SIGNED_EXTRAS_BYTES:
        raise ArtifactError(
            f"{path}: its device preprocessing and lineage take more than {MAX_SIGNED_EXTRAS_BYTES} bytes"
        )
    return Artifact(path, data, model_id, version, fmt, meta, preprocessing, lineage, side if exported else {})


def _envelope(key: SigningKey, signed: dict[str, Any]) -> bytes:
    return json.dumps(key.sign(signed), separators=(",", ":")).encode("utf-8")


@dataclass(frozen=True)
class SignedModel:
    """A model file with its signed manifest. The manifest names its targets (device ids and/or a group): the chunks
    are the same for every target, the manifest is signed again for each (:meth:`addressed`)."""

    artifact: Artifact
    manifest: Manifest
    envelope: bytes  # the signed manifest, as it goes on the wire

    def chunk_messages(self) -> list[tuple[str, bytes, bool]]:
        chunks = split_chunks(self.artifact.data, self.manifest.chunk_size)
        return [(self.manifest.chunk_topic(i), c, True) for i, c in enumerate(chunks)]

    def addressed(self, key: SigningKey, targets: Sequence[str] = (), group: str = "") -> SignedModel:
        """The same model with its manifest addressed to ``targets`` and/or ``group``, signed by ``key``."""
        if not targets and not group:
            raise ArtifactError("a manifest must name its target: device ids or a group")
        with as_delivery_error(ArtifactError):
            manifest = Manifest.from_signed(
                dataclasses.replace(self.manifest, targets=tuple(targets), group=group).to_signed()
            )
        return SignedModel(self.artifact, manifest, _envelope(key, manifest.to_signed()))


def sign_artifact(
    artifact: Artifact,
    key: SigningKey,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    expires_in_s: float = DEFAULT_EXPIRES_S,
    now: float | None = None,
    targets: Sequence[str] = (),
    group: str = "",
) -> SignedModel:
    """Build and sign the manifest of ``artifact`` for ``targets`` (device ids) and/or ``group``. Without either the
    manifest is addressed to no device (every device refuses it): :meth:`ModelPublisher.assign` addresses it."""
    now = time.time() if now is None else now
    with as_delivery_error(ArtifactError):
        manifest = manifest_for(
            artifact.data,
            model_id=artifact.model_id,
            version=artifact.version,
            fmt=artifact.format,
            chunk_size=chunk_size,
            issued=int(now),
            expires=int(now + expires_in_s),
            meta=artifact.meta,
            targets=tuple(targets),
            group=group,
            preprocessing=artifact.preprocessing,
            lineage=artifact.lineage,
        )
    return SignedModel(artifact, manifest, _envelope(key, manifest.to_signed()))


class ModelPublisher:
    """Sends signed models and commands through a connected :class:`ServerClient`."""

    def __init__(self, client: ServerClient, key: SigningKey, *, timeout: float = 60.0) -> None:
        self.client = client
        self.key = key
        self.timeout = timeout

    def publish_chunks(self, model: SignedModel) -> None:
        self.client.publish_all(model.chunk_messages(), timeout=self.timeout)

    def clear_chunks(self, manifest: Manifest) -> None:
        """Remove a version's retained chunks from the broker (an empty retained message clears a topic)."""
        self.client.publish_all([(manifest.chunk_topic(i), b"", True) for i in range(manifest.chunks)], self.timeout)

    def assign(self, model: SignedModel, device_ids: list[str], *, group: str = "") -> None:
        """Make ``model`` the one these devices should run: a manifest signed for each device (or, with ``group``,
        one for the group), retained on each one's topic. A manifest copied to another device's topic is refused
        there (``not-addressed``)."""
        if group:
            envelope = model.addressed(self.key, group=group).envelope
            messages = [(manifest_topic(d), envelope, True) for d in device_ids]
        else:
            messages = [(manifest_topic(d), model.addressed(self.key, [d]).envelope, True) for d in device_ids]
        self.client.publish_all(messages, self.timeout)

    def publish_keyset(self, envelope: bytes) -> None:
        """Publish a root-signed key set (:func:`edge.delivery.keys.build_keyset`), retained, for every device."""
        self.client.publish_all([(KEYS_TOPIC, envelope, True)], self.timeout)

    def unassign(self, device_ids: list[str]) -> None:
        self.client.publish_all([(manifest_topic(d), b"", True) for d in device_ids], self.timeout)

    def rollback(self, device_ids: list[str], *, model_id: str, from_version: int, reason: str) -> None:
        """Tell devices running ``model_id`` at ``from_version`` to go back to their previous model (a signed,
        non-retained command; their retained manifest is cleared first, so a reconnection does not bring the version
        back)."""
        now = int(time.time())
        self.unassign(device_ids)
        messages = []
        for d in device_ids:
            command = Command("rollback", d, model_id, from_version, now, now + COMMAND_EXPIRES_S, reason)
            payload = _envelope(self.key, command.to_signed())
            messages.append((command_topic(d, "rollback"), payload, False))
        self.client.publish_all(messages, self.timeout)

"""The wire format between the fedge server and its devices: topics, manifest, commands, state, telemetry.

This module is the one source of truth for what travels over MQTT. The server side (``edge.delivery``) imports it;
it imports nothing from the server side, no torch and no network code, so it can be read (and tested) on its own.

Topics (every id is ``[a-z0-9-]``, see :func:`check_id`)::

    fedge/v1/devices/{device}/state                 device -> retained   birth, state, last will ("lost")
    fedge/v1/devices/{device}/telemetry             device ->            inference statistics, with a sequence number
    fedge/v1/devices/{device}/events                device ->            the outcome of every update (applied, rejected)
    fedge/v1/devices/{device}/manifest              server -> retained   the signed manifest of the model it should run
    fedge/v1/devices/{device}/cmd/{name}            server ->            signed commands (``rollback``); never retained
    fedge/v1/models/{model}/{version}/{format}/{i}  server -> retained   chunk ``i`` of a model file
    fedge/v1/keys                                   server -> retained   the root-signed set of signing keys

State is retained, commands are not (Homie / Sparkplug). A model is never one retained blob: it goes as a signed
manifest on the device's topic and as chunks on the model's topics, which a device subscribes to once it has
accepted the manifest. Everything that must not be lost goes at QoS 1 over persistent sessions.

A manifest names its target (``targets``: device ids, and/or ``group``) and its model id inside the signed part, so
a manifest copied from another device's topic, or one for another model, is refused (``not-addressed``).

Key rotation (TUF's root idea, kept small): a device trusts a root key, which signs only key sets
(``{version, expires, keys, revoked}``); manifests and commands are signed by a key the newest accepted key set lists.

Signed messages are TUF-style envelopes: ``{"signed": {...}, "signatures": [{"keyid": ..., "sig": ...}]}``; the
signature (Ed25519) covers :func:`canonical_json` of ``signed``; ``keyid`` is the sha256 of the raw public key.
Times are integer Unix seconds (UTC).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any
from urllib.parse import unquote, urlsplit

from edge.agent.errors import AgentConfigError, MalformedMessageError, NotAddressedError

PROTOCOL_VERSION = 1
TOPIC_ROOT = "fedge/v1"
MANIFEST_TYPE = "fedge-model-manifest"
COMMAND_TYPE = "fedge-command"
KEYSET_TYPE = "fedge-keyset"
COMMANDS = ("rollback",)
QOS = 1  # everything that must not be lost: manifests, chunks, commands, telemetry, events, state

#: model formats and their file suffix (the one list: the exporter, the publisher and the agent's runtimes read it)
FORMATS = {"onnx": ".onnx", "tflite": ".tflite"}


def format_of(filename: str | PurePath) -> str | None:
    """The model format of a file, by its suffix (``None`` if it is none of :data:`FORMATS`).

    >>> format_of("artifacts/int8.tflite"), format_of("model.pt")
    ('tflite', None)
    """
    suffix = PurePath(filename).suffix
    return next((fmt for fmt, known in FORMATS.items() if suffix == known), None)


#: device states published (retained) on the state topic
STATES = ("ready", "waiting", "updating", "disconnected", "lost")

# always used with fullmatch: ``$`` in a pattern matches before a final newline ("digits\n" would pass)
_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_DIGITS = re.compile(r"[0-9]{1,18}")  # ASCII digits only: str.isdigit() takes "²", which int() refuses

#: the longest topic any fedge message uses (a chunk topic with 64-character ids is about 120); longer ones are
#: refused before they are parsed
MAX_TOPIC_LENGTH = 256


def is_id(value: object) -> bool:
    """Whether ``value`` is a valid topic id (the whole string: no trailing newline)."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def check_id(kind: str, value: object) -> str:
    """Return ``value`` if it is a valid topic id (``[a-z0-9-]``, 1-64 characters, not starting with ``-``)."""
    if not is_id(value):
        raise MalformedMessageError(f"{kind} {value!r} is not a valid id: use 1-64 characters of [a-z0-9-]")
    return value  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------------------- topics


def device_topic(device_id: str, leaf: str) -> str:
    return f"{TOPIC_ROOT}/devices/{check_id('device id', device_id)}/{leaf}"


def state_topic(device_id: str) -> str:
    return device_topic(device_id, "state")


def telemetry_topic(device_id: str) -> str:
    return device_topic(device_id, "telemetry")


def events_topic(device_id: str) -> str:
    return device_topic(device_id, "events")


def manifest_topic(device_id: str) -> str:
    return device_topic(device_id, "manifest")


def command_topic(device_id: str, name: str) -> str:
    return device_topic(device_id, f"cmd/{check_id('command', name)}")


def command_filter(device_id: str) -> str:
    return device_topic(device_id, "cmd/+")


def chunk_prefix(model_id: str, version: int, fmt: str) -> str:
    if fmt not in FORMATS:
        raise MalformedMessageError(f"unknown model format {fmt!r}; known: {', '.join(FORMATS)}")
    return f"{TOPIC_ROOT}/models/{check_id('model id', model_id)}/{int(version)}/{fmt}"


def chunk_topic(model_id: str, version: int, fmt: str, index: int) -> str:
    return f"{chunk_prefix(model_id, version, fmt)}/{int(index)}"


#: the retained, root-signed key set every device subscribes to
KEYS_TOPIC = f"{TOPIC_ROOT}/keys"


#: what the server side subscribes to
FLEET_FILTERS = (
    f"{TOPIC_ROOT}/devices/+/state",
    f"{TOPIC_ROOT}/devices/+/telemetry",
    f"{TOPIC_ROOT}/devices/+/events",
)


@dataclass(frozen=True)
class Topic:
    """A parsed topic: ``kind`` is state, telemetry, events, manifest, cmd, chunk or keys."""

    kind: str
    device_id: str = ""
    command: str = ""
    model_id: str = ""
    version: int = 0
    format: str = ""
    index: int = -1


def _parse_topic(topic: str, max_length: int) -> Topic | None:
    if not isinstance(topic, str) or len(topic) > max_length:
        return None
    parts = topic.split("/")
    if parts[:2] != TOPIC_ROOT.split("/"):
        return None
    rest = parts[2:]
    if rest == ["keys"]:
        return Topic(kind="keys")
    if len(rest) >= 3 and rest[0] == "devices" and is_id(rest[1]):
        if len(rest) == 3 and rest[2] in ("state", "telemetry", "events", "manifest"):
            return Topic(kind=rest[2], device_id=rest[1])
        if len(rest) == 4 and rest[2] == "cmd" and is_id(rest[3]):
            return Topic(kind="cmd", device_id=rest[1], command=rest[3])
        return None
    if len(rest) == 5 and rest[0] == "models" and is_id(rest[1]) and rest[3] in FORMATS:
        if _DIGITS.fullmatch(rest[2]) and _DIGITS.fullmatch(rest[4]) and len(rest[4]) <= 9:
            return Topic(kind="chunk", model_id=rest[1], version=int(rest[2]), format=rest[3], index=int(rest[4]))
    return None


class TopicParser:
    """Parses topics with a bounded cache (a fleet sends on the same few topics over and over; Topic is immutable).

    Only topics that parse are cached, and only topics of at most ``max_length`` characters are looked at: a flood
    of distinct junk topic names costs no memory. When the cache is full it is emptied and starts again (cheaper
    than an LRU's bookkeeping per message, and the working set of a device or a collector is small).
    """

    def __init__(self, *, max_entries: int = 8192, max_length: int = MAX_TOPIC_LENGTH) -> None:
        self.max_entries = max_entries
        self.max_length = max_length
        self._cache: dict[str, Topic] = {}

    def __len__(self) -> int:
        return len(self._cache)

    def parse(self, topic: str) -> Topic | None:
        """Parse a fedge topic; ``None`` for anything that is not one (never cached)."""
        hit = self._cache.get(topic)
        if hit is not None:
            return hit
        parsed = _parse_topic(topic, self.max_length)
        if parsed is not None:
            if len(self._cache) >= self.max_entries:
                self._cache.clear()
            self._cache[topic] = parsed
        return parsed


#: the shared parser of the server side (the collector); a device agent has its own, sized by its limits
parse_topic = TopicParser().parse


# ---------------------------------------------------------------------------------------------------------- json


def canonical_json(obj: Any) -> bytes:
    """The bytes a signature covers: sorted keys, no spaces, ASCII only (stable across Python versions)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def load_json_object(payload: bytes, what: str) -> dict[str, Any]:
    """Decode a JSON object from a payload; anything else is a :class:`MalformedMessageError`."""
    try:
        obj = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise MalformedMessageError(f"{what} is not valid JSON: {e}") from e
    if not isinstance(obj, dict):
        raise MalformedMessageError(f"{what} must be a JSON object, got {type(obj).__name__}")
    return obj


def keyid_of(public_key_raw: bytes) -> str:
    """The id of an Ed25519 public key: the sha256 (hex) of its 32 raw bytes."""
    return hashlib.sha256(public_key_raw).hexdigest()


def _get(d: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    if key not in d:
        raise MalformedMessageError(f"{what}: missing field {key!r}")
    value = d[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise MalformedMessageError(f"{what}: field {key!r} has the wrong type ({type(value).__name__})")
    return value


def _nonneg_int(d: dict[str, Any], key: str, what: str) -> int:
    value = _get(d, key, int, what)
    if value < 0:
        raise MalformedMessageError(f"{what}: field {key!r} must be >= 0")
    return value


# ---------------------------------------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class Manifest:
    """What a device needs to fetch, check and run one model file (the ``signed`` part of the envelope)."""

    model_id: str
    version: int
    format: str
    length: int
    sha256: str
    chunk_size: int
    chunk_sha256: tuple[str, ...]
    issued: int
    expires: int
    meta: dict[str, Any] = field(default_factory=dict)
    #: the devices this manifest is for (a device takes it only if its id is here, or its group is ``group``)
    targets: tuple[str, ...] = ()
    group: str = ""
    #: what the device does to a raw sample before inference (the artifact's ``device-preprocessing``; checked by
    #: the agent's runtime when it loads the model): inside the signed part, so nobody can change it on the way
    preprocessing: dict[str, Any] = field(default_factory=dict)
    #: where the model came from and its privacy statement (:func:`check_lineage`): run id, config hash, rounds,
    #: sites, global model hash, compression recipe, acceptance, ε / δ / σ / q / steps / clipping / accountant
    lineage: dict[str, Any] = field(default_factory=dict)

    def addressed_to(self, device_id: str, group: str | None) -> bool:
        return device_id in self.targets or (bool(self.group) and self.group == group)

    @property
    def chunks(self) -> int:
        return len(self.chunk_sha256)

    def chunk_length(self, index: int) -> int:
        """The exact length chunk ``index`` must have."""
        if index < self.chunks - 1:
            return self.chunk_size
        return self.length - self.chunk_size * (self.chunks - 1)

    def chunk_topic(self, index: int) -> str:
        return chunk_topic(self.model_id, self.version, self.format, index)

    def chunk_filter(self) -> str:
        return f"{chunk_prefix(self.model_id, self.version, self.format)}/+"

    def to_signed(self) -> dict[str, Any]:
        return {
            "_type": MANIFEST_TYPE,
            "spec_version": PROTOCOL_VERSION,
            "model_id": self.model_id,
            "version": self.version,
            "format": self.format,
            "length": self.length,
            "sha256": self.sha256,
            "chunk_size": self.chunk_size,
            "chunk_sha256": list(self.chunk_sha256),
            "issued": self.issued,
            "expires": self.expires,
            "meta": self.meta,
            "targets": list(self.targets),
            "group": self.group,
            # only when set: a manifest without them reads (and is signed) as before
            **({"preprocessing": self.preprocessing} if self.preprocessing else {}),
            **({"lineage": self.lineage} if self.lineage else {}),
        }

    @property
    def epsilon(self) -> float | None:
        """The largest ε of any client behind this model (the privacy statement's ``epsilon-max``), if stated."""
        value = (self.lineage.get("privacy") or {}).get("epsilon-max")
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    @classmethod
    def from_signed(cls, d: dict[str, Any], *, require_target: bool = True) -> Manifest:
        """Validate the ``signed`` part of a manifest envelope (types, ranges, consistency). A device always requires
        a target; the server builds an unaddressed template first (``require_target=False``) and addresses it later."""
        what = "manifest"
        if d.get("_type") != MANIFEST_TYPE:
            raise MalformedMessageError(f"{what}: _type must be {MANIFEST_TYPE!r}")
        if d.get("spec_version") != PROTOCOL_VERSION:
            raise MalformedMessageError(f"{what}: unsupported spec_version {d.get('spec_version')!r}")
        model_id = check_id("model id", d.get("model_id"))
        version = _nonneg_int(d, "version", what)
        fmt = _get(d, "format", str, what)
        if fmt not in FORMATS:
            raise MalformedMessageError(f"{what}: unknown format {fmt!r}")
        length = _nonneg_int(d, "length", what)
        sha256 = _get(d, "sha256", str, what)
        chunk_size = _nonneg_int(d, "chunk_size", what)
        hashes = _get(d, "chunk_sha256", list, what)
        issued = _nonneg_int(d, "issued", what)
        expires = _nonneg_int(d, "expires", what)
        meta = _get(d, "meta", dict, what)
        if "targets" not in d and "group" not in d:
            raise NotAddressedError(
                f"{what} of {model_id} v{version} names no target (an old-format manifest): republish it with "
                "`fedge publish`, which addresses every manifest to its devices"
            )
        targets = _get(d, "targets", list, what)
        group = _get(d, "group", str, what)
        for target in targets:
            check_id("target device id", target)
        if group:
            check_id("group", group)
        if not targets and not group and require_target:
            raise NotAddressedError(f"{what} of {model_id} v{version} is addressed to no device and no group")
        if version < 1 or length < 1 or chunk_size < 1:
            raise MalformedMessageError(f"{what}: version, length and chunk_size must be >= 1")
        if not _SHA256.fullmatch(sha256) or not all(isinstance(h, str) and _SHA256.fullmatch(h) for h in hashes):
            raise MalformedMessageError(f"{what}: sha256 values must be 64 lowercase hex digits")
        if len(hashes) != -(-length // chunk_size):
            raise MalformedMessageError(
                f"{what}: {len(hashes)} chunk hashes do not fit length {length} in chunks of {chunk_size}"
            )
        preprocessing = _get(d, "preprocessing", dict, what) if "preprocessing" in d else {}
        lineage = check_lineage(_get(d, "lineage", dict, what), what) if "lineage" in d else {}
        return cls(
            model_id,
            version,
            fmt,
            length,
            sha256,
            chunk_size,
            tuple(hashes),
            issued,
            expires,
            meta,
            targets=tuple(targets),
            group=group,
            preprocessing=preprocessing,
            lineage=lineage,
        )


#: the privacy statement's fields (in a manifest's ``lineage.privacy``): numbers where stated, ``None`` where the run
#: record did not keep them; ``accountant`` is a name
PRIVACY_NUMBERS = (
    "epsilon-max",
    "epsilon-median",
    "delta",
    "noise-multiplier",
    "clipping-norm",
    "sampling-rate",
    "steps",
)


def check_lineage(lineage: dict[str, Any], what: str = "lineage") -> dict[str, Any]:
    """Check the shape of a lineage block: a JSON object whose ``privacy`` (if any) holds finite, non-negative
    numbers (or ``null``) for :data:`PRIVACY_NUMBERS` and a string ``accountant``. Returns it unchanged."""
    privacy = lineage.get("privacy")
    if privacy is None:
        return lineage
    if not isinstance(privacy, dict):
        raise MalformedMessageError(f"{what}: 'privacy' must be an object")
    for key in PRIVACY_NUMBERS:
        value = privacy.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise MalformedMessageError(f"{what}: privacy field {key!r} must be a finite number >= 0, got {value!r}")
    if privacy.get("accountant") is not None and not isinstance(privacy["accountant"], str):
        raise MalformedMessageError(f"{what}: privacy field 'accountant' must be a name")
    return lineage


def split_chunks(data: bytes, chunk_size: int) -> list[bytes]:
    return [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]


def manifest_for(
    data: bytes,
    *,
    model_id: str,
    version: int,
    fmt: str,
    chunk_size: int,
    issued: int,
    expires: int,
    meta: dict[str, Any] | None = None,
    targets: tuple[str, ...] | list[str] = (),
    group: str = "",
    preprocessing: dict[str, Any] | None = None,
    lineage: dict[str, Any] | None = None,
) -> Manifest:
    """The manifest of a model file for ``targets`` (device ids) and/or ``group`` (unsigned; ``edge.delivery``
    signs it), with the device's preprocessing and the model's lineage (privacy statement included)."""
    chunks = split_chunks(data, chunk_size)
    manifest = Manifest(
        model_id=check_id("model id", model_id),
        version=int(version),
        format=fmt,
        length=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        chunk_size=chunk_size,
        chunk_sha256=tuple(hashlib.sha256(c).hexdigest() for c in chunks),
        issued=int(issued),
        expires=int(expires),
        meta=dict(meta or {}),
        targets=tuple(targets),
        group=group,
        preprocessing=dict(preprocessing or {}),
        lineage=dict(lineage or {}),
    )
    # the same checks a device runs
    return Manifest.from_signed(manifest.to_signed(), require_target=bool(targets or group))


# ---------------------------------------------------------------------------------------------------------- commands


@dataclass(frozen=True)
class Command:
    """A signed command to one device. ``rollback`` applies only while the device runs ``model_id`` at
    ``from_version`` (version floors are per model id), so an old command replayed later, or one meant for another
    model at the same version number, does nothing."""

    command: str
    device_id: str
    model_id: str
    from_version: int
    issued: int
    expires: int
    reason: str = ""

    def to_signed(self) -> dict[str, Any]:
        return {
            "_type": COMMAND_TYPE,
            "spec_version": PROTOCOL_VERSION,
            "command": self.command,
            "device_id": self.device_id,
            "model_id": self.model_id,
            "from_version": self.from_version,
            "issued": self.issued,
            "expires": self.expires,
            "reason": self.reason,
        }

    @classmethod
    def from_signed(cls, d: dict[str, Any]) -> Command:
        what = "command"
        if d.get("_type") != COMMAND_TYPE or d.get("spec_version") != PROTOCOL_VERSION:
            raise MalformedMessageError(f"{what}: not a {COMMAND_TYPE} of spec_version {PROTOCOL_VERSION}")
        command = _get(d, "command", str, what)
        if command not in COMMANDS:
            raise MalformedMessageError(f"{what}: unknown command {command!r}")
        reason = _get(d, "reason", str, what)
        return cls(
            command=command,
            device_id=check_id("device id", d.get("device_id")),
            model_id=check_id("model id", d.get("model_id")),
            from_version=_nonneg_int(d, "from_version", what),
            issued=_nonneg_int(d, "issued", what),
            expires=_nonneg_int(d, "expires", what),
            reason=reason[:200],
        )


# ---------------------------------------------------------------------------------------------------------- key set


@dataclass(frozen=True)
class KeySet:
    """The signing keys devices trust, as the root key signed them: ``keys`` maps key id -> raw Ed25519 public key
    (32 bytes); ``revoked`` lists key ids never to trust again. A device takes a key set only if the root signed it,
    its version is higher than the one it has, and it has not expired."""

    version: int
    issued: int
    expires: int
    keys: dict[str, bytes]
    revoked: tuple[str, ...] = ()

    def to_signed(self) -> dict[str, Any]:
        return {
            "_type": KEYSET_TYPE,
            "spec_version": PROTOCOL_VERSION,
            "version": self.version,
            "issued": self.issued,
            "expires": self.expires,
            "keys": [{"keyid": k, "public": base64.b64encode(raw).decode("ascii")} for k, raw in self.keys.items()],
            "revoked": list(self.revoked),
        }

    @classmethod
    def from_signed(cls, d: dict[str, Any]) -> KeySet:
        what = "key set"
        if d.get("_type") != KEYSET_TYPE or d.get("spec_version") != PROTOCOL_VERSION:
            raise MalformedMessageError(f"{what}: not a {KEYSET_TYPE} of spec_version {PROTOCOL_VERSION}")
        version = _nonneg_int(d, "version", what)
        issued = _nonneg_int(d, "issued", what)
        expires = _nonneg_int(d, "expires", what)
        entries = _get(d, "keys", list, what)
        revoked = _get(d, "revoked", list, what)
        keys: dict[str, bytes] = {}
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("public"), str):
                raise MalformedMessageError(f"{what}: every key is an object with 'keyid' and 'public'")
            try:
                raw = base64.b64decode(entry["public"], validate=True)
            except (binascii.Error, ValueError) as e:
                raise MalformedMessageError(f"{what}: a public key is not base64") from e
            if len(raw) != 32 or entry.get("keyid") != keyid_of(raw):
                raise MalformedMessageError(f"{what}: key {str(entry.get('keyid'))[:16]} does not match its key id")
            keys[entry["keyid"]] = raw
        if not all(isinstance(k, str) and _SHA256.fullmatch(k) for k in revoked):
            raise MalformedMessageError(f"{what}: revoked key ids must be 64 lowercase hex digits")
        if version < 1 or not keys:
            raise MalformedMessageError(f"{what}: needs a version >= 1 and at least one key")
        if set(keys) & set(revoked):
            raise MalformedMessageError(f"{what}: a key is both listed and revoked")
        return cls(version, issued, expires, keys, tuple(revoked))


# ---------------------------------------------------------------------------------------------- device -> server


def state_message(
    *,
    device_id: str,
    state: str,
    runtime: str,
    session: str,
    ts: float,
    model_id: str | None = None,
    version: int | None = None,
    previous_version: int | None = None,
    last_update: dict[str, Any] | None = None,
    lineage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The retained state of a device (its birth message, and every change after); ``lineage`` is the signed
    lineage and privacy statement of the model it runs, as its manifest carried it."""
    if state not in STATES:
        raise ValueError(f"unknown state {state!r}")
    return {
        "type": "state",
        "device_id": device_id,
        "state": state,
        "runtime": runtime,
        "session": session,
        "ts": round(ts, 3),
        "model_id": model_id,
        "version": version,
        "previous_version": previous_version,
        "last_update": last_update,
        **({"lineage": lineage} if lineage else {}),
    }


def lost_message(device_id: str, runtime: str, session: str) -> dict[str, Any]:
    """The last will: the broker publishes it (retained) when the device drops without saying goodbye."""
    return {"type": "state", "device_id": device_id, "state": "lost", "runtime": runtime, "session": session}


def update_event(
    *,
    device_id: str,
    session: str,
    ts: float,
    outcome: str,
    reason: str,
    detail: str,
    model_id: str | None,
    version: int | None,
    running_version: int | None,
) -> dict[str, Any]:
    """The outcome of one update: ``applied``, ``rejected`` (with the reason) or ``rolled-back``."""
    return {
        "type": "update",
        "device_id": device_id,
        "session": session,
        "ts": round(ts, 3),
        "outcome": outcome,
        "reason": reason,
        "detail": detail[:500],
        "model_id": model_id,
        "version": version,
        "running_version": running_version,
    }


@dataclass(frozen=True, kw_only=True)
class Telemetry:
    """One telemetry message: what a device measured over one report window (see
    :class:`edge.agent.telemetry.TelemetryWindow`), numbered per connection (``session``, ``seq`` from 1) so the
    collector can count what was lost on the way. The agent builds one and sends :meth:`to_message`; the collector
    reads one with :func:`parse_telemetry`. Counts are required; the rest may be absent (``None``)."""

    device_id: str
    session: str
    seq: int
    inferences: int
    errors: int
    labelled: int
    correct: int
    ts: float | None = None
    model_id: str | None = None
    version: int | None = None
    runtime: str | None = None
    window_s: float | None = None
    latency_ms_p50: float | None = None
    latency_ms_p95: float | None = None
    mean_confidence: float | None = None
    histogram: tuple[int, ...] | None = None  # predictions per class
    accuracy: float | None = None
    dropped: int = 0  # messages the device's offline buffer dropped so far (oldest first)

    def to_message(self) -> dict[str, Any]:
        """The JSON object sent on :func:`telemetry_topic`."""
        return {
            "type": "telemetry",
            "device_id": self.device_id,
            "session": self.session,
            "seq": self.seq,
            "ts": None if self.ts is None else round(self.ts, 3),
            "model_id": self.model_id,
            "version": self.version,
            "runtime": self.runtime,
            "window_s": self.window_s,
            "inferences": self.inferences,
            "errors": self.errors,
            "latency_ms_p50": self.latency_ms_p50,
            "latency_ms_p95": self.latency_ms_p95,
            "mean_confidence": self.mean_confidence,
            "histogram": None if self.histogram is None else list(self.histogram),
            "labelled": self.labelled,
            "correct": self.correct,
            "accuracy": self.accuracy,
            "dropped": self.dropped,
        }

    @classmethod
    def from_message(cls, msg: dict[str, Any], what: str = "telemetry") -> Telemetry:
        """Validate a decoded telemetry message (types and ranges); unknown fields are ignored. Table-driven and
        inlined: the collector runs this for every message a fleet sends."""
        if msg.get("type", "telemetry") != "telemetry":
            raise MalformedMessageError(f"{what}: type {msg.get('type')!r} is not 'telemetry'")
        values: dict[str, Any] = {"device_id": check_id("device id", msg.get("device_id"))}
        for key in _TELEMETRY_COUNTS:
            value = msg.get(key)
            if type(value) is not int or value < 0:  # type(): a bool is not a count
                raise MalformedMessageError(_field_error(msg, key, "an integer >= 0", what))
            values[key] = value
        if values["seq"] < 1:
            raise MalformedMessageError(f"{what}: seq starts at 1")
        session = msg.get("session")
        if type(session) is not str:
            raise MalformedMessageError(_field_error(msg, "session", "a string", what))
        values["session"] = session
        for key, kinds in _TELEMETRY_OPTIONAL.items():
            value = msg.get(key)
            if value is None:
                continue
            if type(value) not in kinds:
                raise MalformedMessageError(_field_error(msg, key, "", what))
            if kinds is _NUMBER and not math.isfinite(value):
                raise MalformedMessageError(f"{what}: field {key!r} must be a finite number")
            values[key] = value
        if values.get("dropped", 0) < 0:
            raise MalformedMessageError(f"{what}: field 'dropped' must be >= 0")
        histogram = msg.get("histogram")
        if histogram is not None:
            if type(histogram) is not list or any(type(n) is not int or n < 0 for n in histogram):
                raise MalformedMessageError(f"{what}: field 'histogram' must be a list of counts")
            values["histogram"] = tuple(histogram)
        return cls(**values)


_NUMBER = (int, float)
#: required telemetry fields (integers >= 0) and the optional ones with the JSON types each may have
_TELEMETRY_COUNTS = ("seq", "inferences", "errors", "labelled", "correct")
_TELEMETRY_OPTIONAL: dict[str, tuple[type, ...]] = {
    "ts": _NUMBER,
    "model_id": (str,),
    "version": (int,),
    "runtime": (str,),
    "window_s": _NUMBER,
    "latency_ms_p50": _NUMBER,
    "latency_ms_p95": _NUMBER,
    "mean_confidence": _NUMBER,
    "accuracy": _NUMBER,
    "dropped": (int,),
}


def _field_error(msg: dict[str, Any], key: str, want: str, what: str) -> str:
    if key not in msg:
        return f"{what}: missing field {key!r}"
    value = msg[key]
    if want and type(value) is int:
        return f"{what}: field {key!r} must be >= 0"
    return f"{what}: field {key!r} has the wrong type ({type(value).__name__})" + (f"; expected {want}" if want else "")


def parse_telemetry(topic: Topic, payload: bytes) -> Telemetry:
    """Validate a telemetry message from the device its topic names, for the collector."""
    what = f"telemetry of {topic.device_id}"
    msg = load_json_object(payload, what)
    if msg.get("device_id") != topic.device_id:
        raise MalformedMessageError(f"{what}: device_id {msg.get('device_id')!r} does not match the topic")
    return Telemetry.from_message(msg, what)


def parse_device_message(topic: Topic, payload: bytes) -> dict[str, Any]:
    """Validate a state or events message a device sent, for the collector (telemetry: :func:`parse_telemetry`)."""
    what = f"{topic.kind} of {topic.device_id}"
    if topic.kind == "telemetry":
        return parse_telemetry(topic, payload).to_message()
    msg = load_json_object(payload, what)
    if msg.get("device_id") != topic.device_id:
        raise MalformedMessageError(f"{what}: device_id {msg.get('device_id')!r} does not match the topic")
    if topic.kind == "state":
        if msg.get("state") not in STATES:
            raise MalformedMessageError(f"{what}: unknown state {msg.get('state')!r}")
    elif topic.kind == "events":
        if msg.get("outcome") not in ("applied", "rejected", "rolled-back"):
            raise MalformedMessageError(f"{what}: unknown outcome {msg.get('outcome')!r}")
    return msg


# ---------------------------------------------------------------------------------------------------------- broker URL


@dataclass(frozen=True)
class BrokerAddress:
    """Where the broker is: ``mqtt://[user[:password]@]host[:port]`` or ``mqtts://...`` (TLS, port 8883)."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        if "://" not in url:
            url = "mqtt://" + url
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise AgentConfigError(f"broker URL {url!r}: the scheme must be mqtt:// or mqtts://")
        tls = parts.scheme in ("mqtts", "ssl")
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError as e:
            raise AgentConfigError(f"broker URL {url!r}: bad port") from e
        if not parts.hostname:
            raise AgentConfigError(f"broker URL {url!r}: no host")
        return cls(
            host=parts.hostname,
            port=port,
            tls=tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )

    def url(self, *, with_password: bool = False) -> str:
        auth = ""
        if self.username:
            auth = self.username + (f":{self.password}" if with_password and self.password else "") + "@"
        return f"{'mqtts' if self.tls else 'mqtt'}://{auth}{self.host}:{self.port}"

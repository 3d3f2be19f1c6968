"""The device agent: receives, verifies and swaps models, runs inference, reports telemetry.

:class:`DeviceAgent` holds all the logic and talks to the broker only through a small :class:`Transport`
(publish, subscribe, unsubscribe, connected), so the tests can drive it with a fake one and feed any bytes to its
handlers; :mod:`edge.agent.link` is the MQTT transport (paho-mqtt). Everything happens on one thread: the MQTT
thread only queues what arrives, and :meth:`DeviceAgent.run` handles it between inference windows.

Every update ends in an outcome on ``.../events`` (``applied``, ``rejected`` with the reason, ``rolled-back``) and in
the retained state (``last_update``); a rejected update never touches the running model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from edge.agent.config import AgentConfig
from edge.agent.errors import (
    AgentConfigError,
    AgentError,
    ModelLoadError,
    ModelRuntimeError,
    OversizedPayloadError,
    RejectedUpdateError,
    StaleCommandError,
    TamperedChunkError,
    UnknownTopicError,
)
from edge.agent.protocol import (
    KEYS_TOPIC,
    QOS,
    Manifest,
    Telemetry,
    TopicParser,
    command_filter,
    events_topic,
    manifest_topic,
    state_message,
    state_topic,
    telemetry_topic,
    update_event,
)
from edge.agent.runtime import ModelRunner, load_runner, probabilities
from edge.agent.store import ModelStore, StoredModel
from edge.agent.telemetry import SampleSource, TelemetryBuffer, TelemetryWindow
from edge.agent.verify import (
    ChunkAssembler,
    TrustedKeys,
    TrustedSigners,
    check_addressed,
    check_manifest,
    read_manifest,
    verify_command,
)

log = logging.getLogger("fedge.agent")


class Transport(Protocol):
    """What the agent needs from a broker connection."""

    @property
    def connected(self) -> bool: ...

    def publish(self, topic: str, payload: bytes, *, qos: int = QOS, retain: bool = False) -> None: ...

    def subscribe(self, topic_filter: str, *, qos: int = QOS) -> None: ...

    def unsubscribe(self, topic_filter: str) -> None: ...


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


class DeviceAgent:
    """One device. Create it, attach a transport, call :meth:`on_connect` on every (re)connection, and
    :meth:`handle` for every message; :meth:`report` runs one inference window and sends its telemetry."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        trusted: TrustedKeys,
        transport: Transport,
        samples: SampleSource | None = None,
        clock: Callable[[], float] = time.time,
        session: str | None = None,
        root: TrustedKeys | None = None,
    ) -> None:
        self.config = config
        self.limits = config.limits
        self.signers = TrustedSigners(trusted, root=root)
        self.topics = TopicParser(max_entries=self.limits.topic_cache_entries, max_length=self.limits.max_topic_length)
        self.transport = transport
        self.samples = samples
        self.clock = clock
        self.session = session or secrets.token_hex(4)
        self.store = ModelStore(config.store)
        self.runner: ModelRunner | None = None
        self.pending: ChunkAssembler | None = None
        self.seq = 0
        self.outbox = TelemetryBuffer(self.limits.telemetry_buffer_max)
        self.window = TelemetryWindow(clock())
        self.last_update: dict[str, Any] | None = None
        # digests of rejected payloads already reported (bounded: a retained bad message is reported once)
        self._reported: deque[str] = deque(maxlen=self.limits.reported_rejections)
        self.ignored = 0  # device reports (state, telemetry, events) that reached this device: dropped unanswered
        self._load_keyset()
        self._load_current()

    # ------------------------------------------------------------------------------------------------- state

    @property
    def device_id(self) -> str:
        return self.config.device_id

    @property
    def version(self) -> int | None:
        current = self.store.state.current
        return current.version if current else None

    @property
    def trusted(self) -> TrustedKeys:
        """The signing keys trusted now (direct ones and the key set's while it has not expired, less the
        revoked)."""
        return self.signers.keys_at(self.clock())

    def _load_keyset(self) -> None:
        """Take back the key set accepted before a restart (checked against the root again, expiry aside)."""
        envelope = self.store.load_keyset() if self.signers.root else None
        if envelope is None:
            return
        try:
            self.signers.accept(envelope, limits=self.limits, now=None)
        except AgentError as e:
            log.error("%s: the stored key set is not valid (%s); trusting the direct keys only", self.device_id, e)

    @staticmethod
    def _loader(model: StoredModel, data: bytes) -> ModelRunner:
        """A stored model's runner, with the preprocessing its signed manifest declared."""
        return load_runner(model.format, data, model.preprocessing)

    def _load_current(self) -> None:
        """Resume with the model the store names (after a restart). One that does not load falls back to the previous
        one only after that one was checked and loaded; with neither, the agent says it has no model and waits."""
        current = self.store.state.current
        if current is None:
            if self.store.state.lost is not None:
                log.error("%s: no model that loads; waiting for a new one", self.device_id)
            return
        try:
            self.runner = self._loader(current, self.store.read_intact(current))
            return
        except AgentError as e:
            log.warning("%s: stored model v%s does not load (%s)", self.device_id, current.version, e)
        try:
            _, self.runner = self.store.rollback(self._loader)
            log.warning("%s: resumed with the previous model v%s", self.device_id, self.version)
        except AgentError as e:
            self.store.forget_current()
            log.error("%s: no model that loads (%s); waiting for a new one", self.device_id, e)

    def state_payload(self, state: str | None = None) -> bytes:
        s = self.store.state
        if state is None:
            state = "updating" if self.pending else ("ready" if self.runner else "waiting")
        return _dumps(
            state_message(
                device_id=self.device_id,
                state=state,
                runtime=self.config.runtime,
                session=self.session,
                ts=self.clock(),
                model_id=s.current.model_id if s.current else None,
                version=s.current.version if s.current else None,
                previous_version=s.previous.version if s.previous else None,
                last_update=self.last_update,
                lineage=s.current.lineage if s.current else None,
            )
        )

    def publish_state(self, state: str | None = None) -> None:
        self._send(state_topic(self.device_id), self.state_payload(state), retain=True)

    def _send(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish now when connected; otherwise keep it (bounded) and send it on the next connection."""
        if self.transport.connected:
            self.transport.publish(topic, payload, qos=QOS, retain=retain)
        elif not retain:
            self.outbox.push((topic, payload))
        # retained state is re-published on connect anyway

    # ------------------------------------------------------------------------------------------------- connection

    def subscriptions(self) -> list[str]:
        topics = [manifest_topic(self.device_id), command_filter(self.device_id)]
        if self.signers.root:
            topics.append(KEYS_TOPIC)
        if self.pending:
            topics.append(self.pending.manifest.chunk_filter())
        return topics

    def on_connect(self) -> None:
        """On every (re)connection: subscribe (retained manifest and chunks come again), publish the birth
        state, then send what was kept while the broker was away, in order."""
        for topic in self.subscriptions():
            self.transport.subscribe(topic, qos=QOS)
        self.publish_state()
        while len(self.outbox) and self.transport.connected:
            topic, payload = self.outbox.pop()
            self.transport.publish(topic, payload, qos=QOS, retain=False)

    # ------------------------------------------------------------------------------------------------- messages

    def handle(self, topic: str, payload: bytes) -> None:
        """Handle one message. Never raises: a bad message is rejected and reported, the agent goes on."""
        try:
            self._dispatch(topic, bytes(payload))
        except RejectedUpdateError as e:
            self._reject(e.reason, e.message, payload)
        except AgentError as e:
            self._reject("error", str(e), payload)
        except Exception as e:  # a bug must not stop the device: report it and keep serving
            log.exception("%s: unexpected error on %s", self.device_id, topic)
            self._reject("internal-error", f"{type(e).__name__}: {e}", payload)

    def _dispatch(self, topic: str, payload: bytes) -> None:
        parsed = self.topics.parse(topic)
        if parsed is None:
            raise UnknownTopicError(f"message on an unknown topic {topic[:120]!r}")
        if parsed.kind in ("state", "telemetry", "events"):
            # what devices report to the server (another device's, or this one's own echo): never answered, or a
            # broker that forwards it by mistake (amqtt 0.11 does, now and then) would set devices answering
            # each other's answers
            self.ignored += 1
            log.debug("%s: ignored a device report on %s", self.device_id, topic[:120])
            return
        if parsed.kind == "chunk":
            self._on_chunk(parsed.model_id, parsed.version, parsed.format, parsed.index, payload)
        elif parsed.kind == "keys":
            self._on_keyset(payload)
        elif parsed.device_id != self.device_id:
            raise UnknownTopicError(f"message on {topic[:120]!r}, which is not this device's")
        elif parsed.kind == "manifest":
            self._on_manifest(payload)
        elif parsed.kind == "cmd" and parsed.command == "rollback":
            self._on_rollback(payload)
        else:
            raise UnknownTopicError(f"this device does not take messages on {topic[:120]!r}")

    def _on_keyset(self, payload: bytes) -> None:
        if not payload:
            return  # a cleared retained key set: the device keeps the one it has
        if len(payload) <= self.limits.max_keyset_bytes and self.signers.keyset is not None:
            if payload == self.store.load_keyset():
                return  # the key set it already has (retained, seen again after a reconnect)
        keyset = self.signers.accept(payload, limits=self.limits, now=self.clock())
        self.store.save_keyset(payload)
        log.info("%s: key set v%s, %d signing keys", self.device_id, keyset.version, len(keyset.keys))

    def _on_manifest(self, payload: bytes) -> None:
        if not payload:
            # a cleared retained manifest: the server no longer wants this device on what it is fetching
            self._abandon_transfer()
            return
        manifest = read_manifest(
            payload,
            trusted=self.trusted,
            limits=self.limits,
            revoked=self.signers.revoked,
            expired=self.signers.expired_keyset_signers(self.clock()),
        )
        check_addressed(manifest, device_id=self.device_id, group=self.config.group, model_ids=self.config.model_ids)
        if self.pending and self.pending.manifest == manifest:
            return  # already fetching it
        # an authentic manifest for this device replaces the one in flight, whether or not it is then accepted
        self._abandon_transfer()
        current = self.store.state.current
        if current and (current.model_id, current.version, current.sha256) == (
            manifest.model_id,
            manifest.version,
            manifest.sha256,
        ):
            return  # the model it already runs (a retained manifest seen again after a reconnect)
        floor = self.store.state.floor(manifest.model_id)
        check_manifest(
            manifest,
            limits=self.limits,
            now=self.clock(),
            floor_version=floor - 1 if self.store.repairs(manifest) else floor,
            model_format=self.config.model_format,
        )
        self.pending = ChunkAssembler(manifest, started=self.clock(), limits=self.limits)
        self.transport.subscribe(manifest.chunk_filter(), qos=QOS)
        self.publish_state()
        log.info(
            "%s: fetching %s v%s (%d chunks)", self.device_id, manifest.model_id, manifest.version, manifest.chunks
        )

    def _on_chunk(self, model_id: str, version: int, fmt: str, index: int, payload: bytes) -> None:
        pending = self.pending
        if pending is None or (model_id, version, fmt) != (
            pending.manifest.model_id,
            pending.manifest.version,
            pending.manifest.format,
        ):
            return  # a chunk of a transfer this device is not doing (a retained chunk after it unsubscribed)
        if not 0 <= index < pending.manifest.chunks:
            # no chunk of this transfer: refuse it, but a stray (or planted) topic must not end a good transfer
            raise TamperedChunkError(f"chunk {index} is out of range (the manifest lists {pending.manifest.chunks})")
        if len(payload) > self.limits.max_chunk_bytes:
            raise OversizedPayloadError(f"chunk {index} of {len(payload)} bytes is over {self.limits.max_chunk_bytes}")
        try:
            if not pending.add(index, payload):
                return
            data = pending.result()
            try:
                runner = load_runner(pending.manifest.format, data, pending.manifest.preprocessing)
            except (ModelRuntimeError, AgentConfigError) as e:  # a model, or a declared preprocessing, that fails
                raise ModelLoadError(str(e)) from e
        except RejectedUpdateError:
            self._abandon_transfer()
            raise
        self._abandon_transfer()
        self.store.install(pending.manifest, data)  # the model is checked and loaded: now it may become current
        self.runner = runner
        self.store.prune()  # the new model serves: only now may older files go
        self.window = TelemetryWindow(self.clock())
        self._outcome(
            "applied", "ok", f"running {pending.manifest.model_id} v{pending.manifest.version}", pending.manifest
        )
        log.info("%s: now running %s v%s", self.device_id, pending.manifest.model_id, pending.manifest.version)

    def _on_rollback(self, payload: bytes) -> None:
        command = verify_command(
            payload,
            trusted=self.trusted,
            limits=self.limits,
            now=self.clock(),
            device_id=self.device_id,
            name="rollback",
            revoked=self.signers.revoked,
        )
        current = self.store.state.current
        if current is not None and current.model_id != command.model_id:
            raise StaleCommandError(
                f"rollback of {command.model_id} does not apply: this device runs {current.model_id}"
            )
        if self.version != command.from_version:
            raise StaleCommandError(
                f"rollback from v{command.from_version} does not apply: this device runs v{self.version}"
            )
        self._abandon_transfer()
        # the previous model is checked (length, sha256) and loaded before it becomes current; if it cannot serve,
        # the current one keeps serving and nothing is deleted
        state, runner = self.store.rollback(self._loader)
        assert state.current is not None
        self.runner = runner
        self.store.prune()
        self.window = TelemetryWindow(self.clock())
        self._outcome(
            "rolled-back",
            command.reason or "commanded",
            f"back to v{state.current.version} from v{command.from_version}",
            None,
            version=command.from_version,
        )

    def _abandon_transfer(self) -> None:
        if self.pending is not None:
            self.transport.unsubscribe(self.pending.manifest.chunk_filter())
            self.pending = None

    # ------------------------------------------------------------------------------------------------- outcomes

    def _outcome(
        self, outcome: str, reason: str, detail: str, manifest: Manifest | None, *, version: int | None = None
    ) -> None:
        event = update_event(
            device_id=self.device_id,
            session=self.session,
            ts=self.clock(),
            outcome=outcome,
            reason=reason,
            detail=detail,
            model_id=manifest.model_id if manifest else None,
            version=manifest.version if manifest else version,
            running_version=self.version,
        )
        self.last_update = {k: event[k] for k in ("outcome", "reason", "version", "ts")}
        self._send(events_topic(self.device_id), _dumps(event))
        self.publish_state()

    def _reject(self, reason: str, detail: str, payload: bytes) -> None:
        digest = hashlib.sha256(reason.encode() + b"\0" + bytes(payload)).hexdigest()
        if digest in self._reported:
            return  # the same bad message again (a retained one after a reconnect): reported once
        self._reported.append(digest)
        log.warning("%s: rejected (%s): %s", self.device_id, reason, detail)
        self._outcome("rejected", reason, detail, None)

    # ------------------------------------------------------------------------------------------------- inference

    def tick(self) -> None:
        """Periodic work: give up a transfer that takes too long."""
        if self.pending is not None:
            try:
                self.pending.check_timeout(self.clock())
            except RejectedUpdateError as e:
                self._abandon_transfer()
                self._reject(e.reason, e.message, e.message.encode())

    def infer(self, count: int) -> None:
        """Run ``count`` inferences on the next samples, one at a time, recording each in the window."""
        if self.runner is None or self.samples is None:
            return
        for _ in range(count):
            x, label = self.samples.next()
            start = time.perf_counter()
            try:
                scores = self.runner.predict(x)
            except Exception:  # a failing inference is counted, not fatal
                self.window.record_error()
                continue
            self.window.record((time.perf_counter() - start) * 1000.0, probabilities(scores), label)

    def report(self) -> dict[str, Any] | None:
        """Close the window and send its telemetry (kept for later while the broker is away)."""
        current = self.store.state.current
        if current is None:
            return None
        now = self.clock()
        self.seq += 1
        message = Telemetry(
            device_id=self.device_id,
            session=self.session,
            seq=self.seq,
            ts=now,
            model_id=current.model_id,
            version=current.version,
            runtime=self.config.runtime,
            dropped=self.outbox.dropped,
            **self.window.snapshot(now),
        ).to_message()
        self.window = TelemetryWindow(now)
        self._send(telemetry_topic(self.device_id), _dumps(message))
        return message

    # ------------------------------------------------------------------------------------------------- main loop

    def run(self, inbox: queue.Queue, stop: threading.Event) -> None:
        """The agent's loop: handle what the transport queued (``("connect",)`` or ``("message", topic, payload)``)
        and, every ``report_interval_s``, run an inference window and report it."""
        interval = self.config.report_interval_s
        next_report = time.monotonic() + interval
        while not stop.is_set():
            wait = max(0.0, min(next_report - time.monotonic(), 0.5))
            try:
                item = inbox.get(timeout=wait)
            except queue.Empty:
                item = None
            if item is not None:
                if item[0] == "connect":
                    self.on_connect()
                elif item[0] == "message":
                    self.handle(item[1], item[2])
            if time.monotonic() >= next_report:
                self.tick()
                self.infer(self.config.samples_per_report)
                self.report()
                next_report = max(next_report + interval, time.monotonic())

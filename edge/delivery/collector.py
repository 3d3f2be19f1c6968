"""The fleet collector: every state, telemetry and update message the devices send, kept in SQLite.

:class:`FleetStore` is the database (no network: the tests and ``fedge fleet status`` use it directly);
:class:`FleetCollector` subscribes to the fleet's topics with a persistent session and writes what arrives.
Telemetry is keyed by (device, session, seq): a QoS 1 duplicate is stored once, and the gaps in each session's
sequence numbers are the messages lost on the way.

A fleet that outgrows one collector runs several as a group (``group``): telemetry and events come through an MQTT
shared subscription (``$share/GROUP/...``: the broker hands each message to one member), states to every member
(retained states are what a new member learns the fleet from), and all of them write one PostgreSQL database
(:class:`edge.delivery.postgres_store.PostgresFleetStore`; :func:`open_fleet_store` picks the store by URL).
"""

from __future__ import annotations

import collections
import json
import logging
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.agent.errors import AgentError
from edge.agent.protocol import (
    FLEET_FILTERS,
    TOPIC_ROOT,
    BrokerAddress,
    Telemetry,
    check_id,
    parse_device_message,
    parse_telemetry,
    parse_topic,
)
from edge.delivery import feedback
from edge.delivery.client import ServerClient
from edge.delivery.errors import DeliveryError

_log = logging.getLogger("fedge.collector")

SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY, state TEXT, runtime TEXT, model_id TEXT, version INTEGER,
    previous_version INTEGER, session TEXT, last_seen REAL, last_update TEXT
);
CREATE TABLE IF NOT EXISTS telemetry (
    device_id TEXT, session TEXT, seq INTEGER, ts REAL, received REAL, model_id TEXT, version INTEGER,
    inferences INTEGER, errors INTEGER, labelled INTEGER, correct INTEGER, latency_ms_p50 REAL,
    latency_ms_p95 REAL, mean_confidence REAL, accuracy REAL, histogram TEXT,
    PRIMARY KEY (device_id, session, seq)
);
-- what the dashboard and the metrics read on every poll: each device's latest report, and the fleet's latest
-- reports. Without these both reads scan the whole table, slower with every report stored; with them a poll costs
-- the same however much is stored, for a little more work on each insert (simulations/benchmarks/fleet_queries.py).
CREATE INDEX IF NOT EXISTS telemetry_device_received ON telemetry (device_id, received, seq);
CREATE INDEX IF NOT EXISTS telemetry_received ON telemetry (received, seq);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, device_id TEXT, ts REAL, received REAL, outcome TEXT, reason TEXT,
    detail TEXT, model_id TEXT, version INTEGER, running_version INTEGER
);
CREATE INDEX IF NOT EXISTS events_received ON events (received);
CREATE TABLE IF NOT EXISTS malformed (received REAL, topic TEXT, reason TEXT);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER);
CREATE TABLE IF NOT EXISTS device_lineage (
    device_id TEXT PRIMARY KEY, model_id TEXT, version INTEGER, epsilon REAL, lineage TEXT
);
CREATE TABLE IF NOT EXISTS degraded (
    id INTEGER PRIMARY KEY AUTOINCREMENT, raised REAL, model_id TEXT, version INTEGER, devices TEXT, measure TEXT,
    value REAL, baseline REAL, reason TEXT, action TEXT
);
"""

_TOUCH = (
    "INSERT INTO devices (device_id, last_seen) VALUES (?, ?) "
    "ON CONFLICT(device_id) DO UPDATE SET last_seen = max(coalesce(last_seen, 0), excluded.last_seen)"
)
_LINEAGE = (
    "INSERT INTO device_lineage VALUES (?, ?, ?, ?, ?) ON CONFLICT(device_id) DO UPDATE SET "
    "model_id = excluded.model_id, version = excluded.version, epsilon = excluded.epsilon, lineage = excluded.lineage"
)
#: the columns of a row of ``events`` (:func:`event_row`) and of ``degraded`` (:func:`feedback.degraded_record`)
EVENT_COLUMNS = "device_id, ts, received, outcome, reason, detail, model_id, version, running_version"
DEGRADED_COLUMNS = "raised, model_id, version, devices, measure, value, baseline, reason, action"
#: what the feedback monitor reads of a device group's telemetry (oldest first)
GROUP_TELEMETRY_COLUMNS = "labelled, correct, inferences, mean_confidence, histogram"


def parse_fleet_message(topic: str, payload: bytes) -> tuple[str, str, Any] | None:
    """(kind, device id, validated message) of what a device sent, as both stores take it; ``None`` for a cleared
    retained state; an :class:`AgentError` for anything malformed (the store keeps :func:`malformed_row` of it)."""
    parsed = parse_topic(topic)
    if parsed is None or parsed.kind not in ("state", "telemetry", "events"):
        raise AgentError(f"not a device message topic: {topic[:200]!r}")
    if parsed.kind == "state" and not payload:
        return None
    parse = parse_telemetry if parsed.kind == "telemetry" else parse_device_message
    return parsed.kind, parsed.device_id, parse(parsed, payload)


def malformed_row(received: float, topic: str, error: Exception) -> tuple:
    """A row of ``malformed``: when, on which topic (cut to size) and why."""
    return received, topic[:200], str(error)[:300]


def telemetry_row(device_id: str, msg: Telemetry, received: float) -> tuple:
    """A row of ``telemetry`` (every column, in table order), the same in both stores."""
    return (
        device_id,
        msg.session,
        msg.seq,
        msg.ts,
        received,
        msg.model_id,
        msg.version,
        msg.inferences,
        msg.errors,
        msg.labelled,
        msg.correct,
        msg.latency_ms_p50,
        msg.latency_ms_p95,
        msg.mean_confidence,
        msg.accuracy,
        json.dumps(msg.histogram),
    )


def event_row(device_id: str, msg: dict[str, Any], received: float) -> tuple:
    """A row of ``events`` (:data:`EVENT_COLUMNS`), the same in both stores; reason and detail cut to size."""
    return (
        device_id,
        msg.get("ts"),
        received,
        msg["outcome"],
        str(msg.get("reason", ""))[:100],
        str(msg.get("detail", ""))[:500],
        msg.get("model_id"),
        msg.get("version"),
        msg.get("running_version"),
    )


@dataclass(frozen=True)
class VersionStats:
    """What a set of devices reported while running one version."""

    reports: int
    inferences: int
    errors: int
    labelled: int
    correct: int

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    @property
    def error_rate(self) -> float | None:
        total = self.inferences + self.errors
        return self.errors / total if total else None


class FleetStore:
    """The collector's SQLite database. Thread-safe (one connection behind a lock).

    ``read_only=True`` opens an existing database for reading only (the dashboard, the metrics endpoint): nothing is
    created or changed, and a writer (the collector) may keep writing to it at the same time.
    """

    def __init__(self, path: Path | str, *, read_only: bool = False) -> None:
        self.path = str(path)
        if read_only:
            if not Path(self.path).is_file():
                raise FileNotFoundError(f"no fleet database at {self.path}")
            uri = f"{Path(self.path).resolve().as_uri()}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
        else:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
        self._lock = threading.Lock()
        self._pending_touch: dict[str, float] | None = None  # last-seen per device, written once per batch
        self._pending_telemetry: list[tuple] | None = None  # telemetry rows, inserted together per batch

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------------------------------------- writing

    def record(self, topic: str, payload: bytes, received: float | None = None) -> str | None:
        """Store one device message; return its kind, or ``None`` for a malformed one (kept in ``malformed``)."""
        with self._lock:
            return self._record(topic, payload, time.time() if received is None else received)

    def record_many(self, messages: list[tuple[str, bytes, float]]) -> list[str | None]:
        """Store (topic, payload, received) messages in one transaction: one disk write for the lot. Telemetry
        rows and last-seen times go in with one ``executemany`` each at the end of the batch."""
        with self._lock:
            self._db.execute("BEGIN")
            self._pending_touch = {}
            self._pending_telemetry = []
            try:
                kinds = [self._record(t, p, r) for t, p, r in messages]
                self._insert_telemetry(self._pending_telemetry)
                self._db.executemany(_TOUCH, list(self._pending_touch.items()))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            finally:
                self._pending_touch = self._pending_telemetry = None
            self._db.execute("COMMIT")
            return kinds

    def _record(self, topic: str, payload: bytes, received: float) -> str | None:
        try:
            message = parse_fleet_message(topic, payload)
        except AgentError as e:
            self._db.execute("INSERT INTO malformed VALUES (?, ?, ?)", malformed_row(received, topic, e))
            return None
        if message is None:
            return None  # a cleared retained state
        kind, device_id, msg = message
        getattr(self, f"_record_{kind}")(device_id, msg, received)
        return kind

    def _touch(self, device_id: str, received: float) -> None:
        self._db.execute(_TOUCH, (device_id, received))

    def _record_state(self, device_id: str, msg: dict[str, Any], received: float) -> None:
        self._touch(device_id, received)
        fields = {"state": msg["state"], "runtime": msg.get("runtime"), "session": msg.get("session")}
        if msg["state"] != "lost":  # the last will carries no model; keep what the device last said
            fields.update(
                model_id=msg.get("model_id"),
                version=msg.get("version"),
                previous_version=msg.get("previous_version"),
                last_update=json.dumps(msg.get("last_update")),
            )
        sets = ", ".join(f"{k} = ?" for k in fields)
        self._db.execute(f"UPDATE devices SET {sets} WHERE device_id = ?", (*fields.values(), device_id))
        lineage = feedback.lineage_record(device_id, msg)
        if lineage is not None:
            self._db.execute(_LINEAGE, lineage)

    def _record_telemetry(self, device_id: str, msg: Telemetry, received: float) -> None:
        if self._pending_touch is not None:
            self._pending_touch[device_id] = max(received, self._pending_touch.get(device_id, 0.0))
        else:
            self._touch(device_id, received)
        row = telemetry_row(device_id, msg, received)
        if self._pending_telemetry is not None:
            self._pending_telemetry.append(row)
        else:
            self._insert_telemetry([row])

    def _insert_telemetry(self, rows: list[tuple]) -> None:
        """Insert telemetry rows; a (device, session, seq) already stored is a QoS 1 redelivery: counted, not kept."""
        if not rows:
            return
        cur = self._db.executemany(
            "INSERT OR IGNORE INTO telemetry VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows
        )
        if cur.rowcount < len(rows):
            self._db.execute(
                "INSERT INTO counters VALUES ('duplicates', ?) ON CONFLICT(name) DO UPDATE SET value = value + ?",
                (len(rows) - cur.rowcount,) * 2,
            )

    def _record_events(self, device_id: str, msg: dict[str, Any], received: float) -> None:
        self._touch(device_id, received)
        self._db.execute(
            f"INSERT INTO events ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            event_row(device_id, msg, received),
        )

    def add_degraded(self, row: tuple) -> bool:
        """Store a ``degraded`` event (:func:`feedback.degraded_record`) unless its model id and version already
        have one; return whether it was stored."""
        model_id, version = row[1], row[2]
        with self._lock:
            cur = self._db.execute(
                f"INSERT INTO degraded ({DEGRADED_COLUMNS}) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ? "
                "WHERE NOT EXISTS (SELECT 1 FROM degraded WHERE model_id = ? AND version = ?)",
                (*row, model_id, version),
            )
            return cur.rowcount == 1

    def set_degraded_action(self, model_id: str, version: int, action: str) -> None:
        """Record what was done about a group's ``degraded`` event (``rollback``, ``held: ...``)."""
        with self._lock:
            self._db.execute(
                "UPDATE degraded SET action = ? WHERE model_id = ? AND version = ?", (action, model_id, version)
            )

    # ------------------------------------------------------------------------------------------------- reading

    def has_schema(self) -> bool:
        """Whether the fleet's tables are there (a file that some other program created reads as no fleet)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('devices', 'telemetry')"
            ).fetchone()
        return rows[0] == 2

    def _query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            self._db.row_factory = sqlite3.Row
            try:
                return self._db.execute(sql, args).fetchall()
            finally:
                self._db.row_factory = None

    def _query_newer(self, sql: str, args: tuple = ()) -> list[dict[str, Any]]:
        """``_query`` of a table that a database written by an older fedge lacks (opened read-only, nothing was
        created): no rows."""
        try:
            return [dict(r) for r in self._query(sql, args)]
        except sqlite3.OperationalError as e:
            if "no such table" not in str(e):
                raise
            return []

    def lineage_rows(self) -> list[dict[str, Any]]:
        """Each device's ``device_lineage`` row (lineage as stored: JSON text); :func:`feedback.device_lineage`."""
        return self._query_newer("SELECT * FROM device_lineage")

    def degraded_rows(self) -> list[dict[str, Any]]:
        """Every ``degraded`` row, oldest first (devices as stored: JSON text); :func:`feedback.degraded_events`."""
        return self._query_newer("SELECT * FROM degraded ORDER BY id")

    def group_telemetry(self, model_id: str, version: int, device_ids: list[str]) -> list[dict[str, Any]]:
        """What ``device_ids`` reported on ``model_id`` ``version``, oldest first (what the feedback monitor judges)."""
        marks = ",".join("?" * len(device_ids))
        rows = self._query(
            f"SELECT {GROUP_TELEMETRY_COLUMNS} FROM telemetry WHERE model_id = ? AND version = ? "
            f"AND device_id IN ({marks}) ORDER BY received, seq",
            (model_id, version, *device_ids),
        )
        return [dict(r) for r in rows]

    def devices(self) -> list[dict[str, Any]]:
        """One row per device: its state, model, last seen, and its latest telemetry (latency, accuracy)."""
        rows = self._query(
            """
            SELECT d.*, t.latency_ms_p50, t.latency_ms_p95, t.accuracy, t.mean_confidence, t.inferences
            FROM devices d LEFT JOIN telemetry t ON t.rowid = (
                SELECT rowid FROM telemetry WHERE device_id = d.device_id ORDER BY received DESC, seq DESC LIMIT 1)
            ORDER BY d.device_id
            """
        )
        out = []
        for r in rows:
            row = dict(r)
            row["last_update"] = json.loads(row["last_update"]) if row.get("last_update") else None
            out.append(row)
        return out

    def device(self, device_id: str) -> dict[str, Any] | None:
        return next((d for d in self.devices() if d["device_id"] == device_id), None)

    def device_states(self) -> dict[str, dict[str, Any]]:
        """Every device's state, runtime, model and version by id: one pass over ``devices``, no telemetry (what
        a rollout polls: :meth:`devices` joins each device's latest telemetry, too slow to ask per device)."""
        rows = self._query("SELECT device_id, state, runtime, model_id, version FROM devices")
        return {r["device_id"]: dict(r) for r in rows}

    def events(
        self, device_id: str | None = None, *, since: float = 0.0, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """The update outcomes devices reported (of ``device_id``, or all) received at or after ``since``, oldest
        first; with ``limit``, only the latest ``limit`` of them (what the dashboard shows, without reading all)."""
        where, args = (
            ("received >= ?", [since]) if device_id is None else ("device_id = ? AND received >= ?", [device_id, since])
        )
        if limit is None:
            rows = self._query(f"SELECT * FROM events WHERE {where} ORDER BY id", tuple(args))
        else:
            rows = self._query(
                f"SELECT * FROM (SELECT * FROM events WHERE {where} ORDER BY id DESC LIMIT ?) ORDER BY id",
                (*args, limit),
            )
        return [dict(r) for r in rows]

    def version_stats(self, device_ids: list[str], version: int, *, since: float = 0.0) -> VersionStats:
        if not device_ids:
            return VersionStats(0, 0, 0, 0, 0)
        marks = ",".join("?" * len(device_ids))
        (row,) = self._query(
            f"SELECT count(*), coalesce(sum(inferences), 0), coalesce(sum(errors), 0), coalesce(sum(labelled), 0), "
            f"coalesce(sum(correct), 0) FROM telemetry WHERE version = ? AND received >= ? "
            f"AND device_id IN ({marks})",
            (version, since, *device_ids),
        )
        return VersionStats(*(int(v) for v in row))

    def reports_since(self, device_id: str, version: int, since: float) -> int:
        (row,) = self._query(
            "SELECT count(*) FROM telemetry WHERE device_id = ? AND version = ? AND received >= ?",
            (device_id, version, since),
        )
        return int(row[0])

    def report_counts(self, device_ids: list[str], version: int, since: float) -> dict[str, int]:
        """Telemetry messages on ``version`` received at or after ``since``, per device (one query for all)."""
        wanted = set(device_ids)
        rows = self._query(
            "SELECT device_id, count(*) FROM telemetry WHERE version = ? AND received >= ? GROUP BY device_id",
            (version, since),
        )
        return {d: int(n) for d, n in rows if d in wanted}

    def sequence_report(self) -> dict[str, int]:
        """Telemetry received, lost (gaps in sequence numbers, per device and session) and duplicates dropped."""
        (row,) = self._query(
            "SELECT coalesce(sum(n), 0), coalesce(sum(top - n), 0) FROM ("
            "SELECT count(*) AS n, max(seq) AS top FROM telemetry GROUP BY device_id, session)"
        )
        dup = self._query("SELECT value FROM counters WHERE name = 'duplicates'")
        return {"received": int(row[0]), "lost": int(row[1]), "duplicates": int(dup[0][0]) if dup else 0}

    def malformed(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._query("SELECT * FROM malformed ORDER BY received")]

    def telemetry(self, *, since: float = 0.0, limit: int = 5000) -> list[dict[str, Any]]:
        """The latest ``limit`` telemetry messages received at or after ``since``, oldest first (no histograms)."""
        rows = self._query(
            "SELECT * FROM (SELECT device_id, session, seq, ts, received, model_id, version, inferences, errors, "
            "labelled, correct, latency_ms_p50, latency_ms_p95, mean_confidence, accuracy FROM telemetry "
            "WHERE received >= ? ORDER BY received DESC, seq DESC LIMIT ?) ORDER BY received, seq",
            (since, limit),
        )
        return [dict(r) for r in rows]

    def event_counts(self) -> list[dict[str, Any]]:
        """How many update outcomes of each kind (applied, rejected, rolled-back) and reason the devices reported."""
        rows = self._query(
            "SELECT outcome, reason, count(*) AS n FROM events GROUP BY outcome, reason ORDER BY outcome, reason"
        )
        return [dict(r) for r in rows]


def open_fleet_store(db: Path | str, *, read_only: bool = False) -> Any:
    """The fleet store ``db`` names: a ``postgresql://`` URL (several collectors, one database), else a SQLite
    file (:class:`FleetStore`, the default for one collector)."""
    from edge.delivery.fleet_db import is_postgres_url
    from edge.delivery.postgres_store import PostgresFleetStore

    if is_postgres_url(db):
        return PostgresFleetStore(str(db), read_only=read_only)
    return FleetStore(db, read_only=read_only)


def fleet_subscriptions(group: str = "") -> tuple[str, ...]:
    """What a collector subscribes to. In a ``group``, telemetry and events go through a shared subscription (each
    message to one member of the group) and states to every member: a retained state is the only way a collector
    that starts later learns about a device, and writing a state twice is harmless (the newer one stays)."""
    if not group:
        return FLEET_FILTERS
    check_id("collector group", group)
    state = f"{TOPIC_ROOT}/devices/+/state"
    return tuple(f if f == state else f"$share/{group}/{f}" for f in FLEET_FILTERS)


def collector_for(
    broker: BrokerAddress,
    db: Path | str,
    *,
    group: str = "",
    client_id: str | None = None,
    ca_file: Path | None = None,
) -> FleetCollector:
    """``fedge fleet collect``: a collector (not started) writing to the store ``db`` names; with ``group``, one
    member of that group, which needs a PostgreSQL store (every member writes the same database)."""
    from edge.delivery.fleet_db import is_postgres_url

    if group:
        check_id("collector group", group)
        if not is_postgres_url(db):
            raise DeliveryError(
                f"--group {group} needs a database every collector of the group writes: pass "
                "--db postgresql://USER:PASSWORD@HOST/DB (SQLite is for one collector)"
            )
    if client_id is None:
        client_id = f"fedge-collector-{group}-{socket.gethostname()}" if group else "fedge-collector"
    return FleetCollector(broker, open_fleet_store(db), client_id=client_id, ca_file=ca_file, group=group)


class FleetCollector:
    """Subscribes to every device's state, telemetry and events and writes them to a :class:`FleetStore`.

    Messages are written in batches (one SQLite transaction each) by a writer thread, and acknowledged to the broker
    only once written (paho's manual acks): a collector that dies between receiving and writing gets the message
    again from its persistent session, never loses it. A QoS 1 redelivery stored twice is dropped by the database.

    With ``group``, this collector is one member of a group sharing the fleet's telemetry and events (see
    :func:`fleet_subscriptions`); the members write one :class:`~edge.delivery.postgres_store.PostgresFleetStore`
    and each needs its own, stable ``client_id``. Mosquitto keeps handing a member its share while that member is
    away (queued in its persistent session, with what it had not acknowledged): a member that dies gets its share
    when it comes back with the same client id, so restart it rather than start a new one under another id.
    """

    def __init__(
        self,
        broker: BrokerAddress,
        store: FleetStore,
        *,
        client_id: str = "fedge-collector",
        ca_file: Path | None = None,
        clean_session: bool = False,
        max_batch: int = 2000,
        group: str = "",
    ) -> None:
        self.store = store
        self.group = group
        self.client_id = client_id
        self.received = 0
        self.write_errors = 0
        self.max_batch = max_batch
        self.client = ServerClient(
            client_id,
            broker,
            subscriptions=fleet_subscriptions(group),
            ca_file=ca_file,
            clean_session=clean_session,
            buffered_reads=True,
        )
        self.client.client.manual_ack_set(True)
        self.client.client.on_message = self._on_message
        self._inbox: collections.deque = collections.deque()
        self._stop = threading.Event()
        self._writer = threading.Thread(target=self._write_loop, name=f"collector-{client_id}", daemon=True)

    def _on_message(self, client, userdata, message) -> None:
        self._inbox.append((message.topic, bytes(message.payload), time.time(), message.mid, message.qos))

    def _write_loop(self) -> None:
        # The paho thread appends to a deque (thread-safe for one appender and one popper); this thread takes
        # what has arrived in batches and sleeps briefly when there is none: cheaper per message than a Queue.
        # The nap grows from 2 ms to 50 ms while the fleet is quiet, so an idle collector does not spin.
        inbox = self._inbox
        nap = 0.002
        while True:
            waiting = len(inbox)
            if not waiting:
                if self._stop.is_set():
                    return
                time.sleep(nap)
                nap = min(nap * 1.5, 0.05)
                continue
            nap = 0.002
            batch = [inbox.popleft() for _ in range(min(waiting, self.max_batch))]
            try:
                self.store.record_many([(t, p, r) for t, p, r, _, _ in batch])
            except Exception as e:  # noqa: BLE001 - one bad message or a database error must not end the writer
                self._record_one_by_one(batch, e)
            self.received += len(batch)
            ack = self.client.client.ack
            for _, _, _, mid, qos in batch:
                if qos > 0:
                    ack(mid, qos)

    def _record_one_by_one(self, batch: list, error: Exception) -> None:
        """The batch failed: store what can be stored, and say what could not (and why) instead of going quiet."""
        self.write_errors += 1
        _log.error("collector: writing %d messages failed (%s); retrying one by one", len(batch), error)
        for topic, payload, received_at, _, _ in batch:
            try:
                self.store.record_many([(topic, payload, received_at)])
            except Exception as e:  # noqa: BLE001
                _log.error("collector: could not store the message on %s (%d bytes): %s", topic, len(payload), e)

    def start(self, timeout: float = 10.0) -> FleetCollector:
        self._writer.start()
        self.client.connect(timeout)
        return self

    def stop(self) -> None:
        """Disconnect, then write what was already received (unacknowledged: the broker keeps it for next time)."""
        self.client.close()
        self._stop.set()
        if self._writer.is_alive():
            self._writer.join(10)

    def wait_until(self, predicate, timeout: float, poll: float = 0.05) -> bool:
        """Poll ``predicate(store)`` until it is true or ``timeout`` passes; return whether it became true."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate(self.store):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(poll)

    def __enter__(self) -> FleetCollector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

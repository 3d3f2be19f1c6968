"""The fleet store on PostgreSQL: the same interface as :class:`edge.delivery.collector.FleetStore` (SQLite), for a
fleet whose messages more than one collector takes (a shared subscription: each message goes to one member).

What changes with several writers:

- Telemetry is stored exactly once across collectors: the primary key (device, session, seq) and
  ``ON CONFLICT DO NOTHING``; a redelivery that another collector (or this one, before it died) already stored is
  counted in ``counters.duplicates``, not kept. Gaps are counted over the whole table, whoever stored what.
- Every collector gets every device's state (retained states go only to non-shared subscriptions), so two
  collectors write the same state: a state is applied only if it is not older than the one stored (``state_ts``:
  the device's ``ts``, or the time received for a last will, which carries none), so a collector that lags behind
  never puts a device back into an older state.
- ``last_seen`` is kept to a second (a row written only when it moved by more), so collectors sharing a stream do
  not queue behind each other's row locks on every batch.
- A device's model lineage (``device_lineage``, from its state) follows the same rule as its state (``state_ts``).
- A ``degraded`` event is stored once per model id and version (a unique index): each collector of a group runs
  the feedback monitor on the same database, and only the one whose row went in reports it (and rolls back).
- Rows of ``devices`` are written in device-id order, and a transaction that still deadlocks with another
  collector's is retried: a batch either commits whole or not at all, and is acknowledged only after it commits.

The driver is psycopg 3 (``pip install "fedge[fleet]"``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from edge.agent.errors import AgentError
from edge.delivery import feedback
from edge.delivery.collector import (
    DEGRADED_COLUMNS,
    EVENT_COLUMNS,
    GROUP_TELEMETRY_COLUMNS,
    VersionStats,
    event_row,
    malformed_row,
    parse_fleet_message,
    telemetry_row,
)
from edge.delivery.errors import DeliveryError
from edge.delivery.fleet_db import redacted

_log = logging.getLogger("fedge.collector")

SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY, state TEXT, runtime TEXT, model_id TEXT, version BIGINT,
    previous_version BIGINT, session TEXT, last_seen DOUBLE PRECISION, last_update TEXT, state_ts DOUBLE PRECISION
);
CREATE TABLE IF NOT EXISTS telemetry (
    device_id TEXT, session TEXT, seq BIGINT, ts DOUBLE PRECISION, received DOUBLE PRECISION, model_id TEXT,
    version BIGINT, inferences BIGINT, errors BIGINT, labelled BIGINT, correct BIGINT,
    latency_ms_p50 DOUBLE PRECISION, latency_ms_p95 DOUBLE PRECISION, mean_confidence DOUBLE PRECISION,
    accuracy DOUBLE PRECISION, histogram TEXT,
    PRIMARY KEY (device_id, session, seq)
);
-- each device's latest report, the fleet's latest reports: as in the SQLite schema (edge/delivery/collector.py)
CREATE INDEX IF NOT EXISTS telemetry_device_received ON telemetry (device_id, received, seq);
CREATE INDEX IF NOT EXISTS telemetry_received ON telemetry (received, seq);
CREATE TABLE IF NOT EXISTS events (
    id BIGSERIAL PRIMARY KEY, device_id TEXT, ts DOUBLE PRECISION, received DOUBLE PRECISION, outcome TEXT,
    reason TEXT, detail TEXT, model_id TEXT, version BIGINT, running_version BIGINT
);
CREATE INDEX IF NOT EXISTS events_received ON events (received);
CREATE TABLE IF NOT EXISTS malformed (received DOUBLE PRECISION, topic TEXT, reason TEXT);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value BIGINT);
CREATE TABLE IF NOT EXISTS device_lineage (
    device_id TEXT PRIMARY KEY, model_id TEXT, version BIGINT, epsilon DOUBLE PRECISION, lineage TEXT,
    state_ts DOUBLE PRECISION
);
CREATE TABLE IF NOT EXISTS degraded (
    id BIGSERIAL PRIMARY KEY, raised DOUBLE PRECISION, model_id TEXT, version BIGINT, devices TEXT, measure TEXT,
    value DOUBLE PRECISION, baseline DOUBLE PRECISION, reason TEXT, action TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS degraded_group ON degraded (model_id, version);
"""

#: one lock id for creating the schema: two collectors starting together must not both create it
_SCHEMA_LOCK = 0x66656467

_TELEMETRY_COLUMNS = (
    "device_id text, session text, seq bigint, ts float8, received float8, model_id text, version bigint, "
    "inferences bigint, errors bigint, labelled bigint, correct bigint, latency_ms_p50 float8, "
    "latency_ms_p95 float8, mean_confidence float8, accuracy float8, histogram text"
)
_TELEMETRY_TYPES = [c.split()[1] for c in _TELEMETRY_COLUMNS.split(", ")]
# one statement per batch whatever its size: the rows as one JSON array, which PostgreSQL unpacks (json.dumps is C;
# psycopg's array dumper, which this replaced, spent 20-25 us of the collector's CPU per message in Python). Floats
# go through repr and back exactly; every value was checked finite by the protocol's parser.
_INSERT_TELEMETRY = (
    "INSERT INTO telemetry SELECT "
    + ", ".join(f"(r->>{i})::{t}" for i, t in enumerate(_TELEMETRY_TYPES))
    + " FROM jsonb_array_elements(%s::jsonb) AS r ON CONFLICT (device_id, session, seq) DO NOTHING"
)
_TOUCH = (
    "INSERT INTO devices (device_id, last_seen) SELECT * FROM unnest(%s::text[], %s::float8[]) "
    "ON CONFLICT (device_id) DO UPDATE SET last_seen = GREATEST(devices.last_seen, excluded.last_seen)"
)
_STATE = (
    "UPDATE devices SET state = %s, runtime = %s, session = %s, state_ts = %s, "
    "model_id = CASE WHEN %s THEN %s ELSE model_id END, version = CASE WHEN %s THEN %s ELSE version END, "
    "previous_version = CASE WHEN %s THEN %s ELSE previous_version END, "
    "last_update = CASE WHEN %s THEN %s ELSE last_update END "
    "WHERE device_id = %s AND (state_ts IS NULL OR state_ts <= %s)"
)
_EVENT = f"INSERT INTO events ({EVENT_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
# a lineage is taken only from a state not older than the one it was stored from (as _STATE does)
_LINEAGE = (
    "INSERT INTO device_lineage (device_id, model_id, version, epsilon, lineage, state_ts) "
    "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (device_id) DO UPDATE SET model_id = excluded.model_id, "
    "version = excluded.version, epsilon = excluded.epsilon, lineage = excluded.lineage, state_ts = excluded.state_ts "
    "WHERE device_lineage.state_ts IS NULL OR device_lineage.state_ts <= excluded.state_ts"
)
_DEGRADED = (
    f"INSERT INTO degraded ({DEGRADED_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (model_id, version) DO NOTHING"
)
_RETRIES = 5
#: a device's last_seen is written when it moved by more than this (seconds): see PostgresFleetStore._write
LAST_SEEN_RESOLUTION_S = 1.0


def _driver():
    try:
        import psycopg
    except ImportError as e:
        raise DeliveryError(
            'a PostgreSQL fleet store needs psycopg 3: pip install "fedge[fleet]" (or "psycopg[binary]>=3.2")'
        ) from e
    return psycopg


class _Batch:
    """What one batch of device messages writes, parsed before the transaction opens."""

    def __init__(self) -> None:
        self.kinds: list[str | None] = []
        self.malformed: list[tuple] = []
        self.touch: dict[str, float] = {}
        self.states: dict[str, tuple] = {}  # device -> (state time, statement args): the newest one per device
        self.lineage: dict[str, tuple] = {}  # device -> (state time, row): from its newest state that has a model
        self.telemetry: list[tuple] = []
        self.events: list[tuple] = []

    def add(self, topic: str, payload: bytes, received: float) -> None:
        try:
            message = parse_fleet_message(topic, payload)
        except AgentError as e:
            self.malformed.append(malformed_row(received, topic, e))
            message = None
        if message is None:  # malformed, or a cleared retained state
            self.kinds.append(None)
            return
        kind, device, msg = message
        self.touch[device] = max(received, self.touch.get(device, 0.0))
        if kind == "telemetry":
            self.telemetry.append(telemetry_row(device, msg, received))
        elif kind == "state":
            self._state(device, msg, received)
        else:
            self.events.append(event_row(device, msg, received))
        self.kinds.append(kind)

    def _state(self, device: str, msg: dict[str, Any], received: float) -> None:
        ts = msg.get("ts")
        at = float(ts) if isinstance(ts, (int, float)) and not isinstance(ts, bool) else received
        full = msg["state"] != "lost"  # the last will carries no model; keep what the device last said
        args = (
            msg["state"],
            msg.get("runtime"),
            msg.get("session"),
            at,
            full,
            msg.get("model_id"),
            full,
            msg.get("version"),
            full,
            msg.get("previous_version"),
            full,
            json.dumps(msg.get("last_update")),
            device,
            at,
        )
        if device not in self.states or self.states[device][0] <= at:
            self.states[device] = (at, args)
        lineage = feedback.lineage_record(device, msg)  # None for a last will: the lineage stored stays
        if lineage is not None and (device not in self.lineage or self.lineage[device][0] <= at):
            self.lineage[device] = (at, (*lineage, at))


class PostgresFleetStore:
    """The fleet store in a PostgreSQL database (``postgresql://user:password@host:port/dbname``), shared by any
    number of collectors. Thread-safe: one connection writes (behind a lock), another reads.

    ``read_only=True`` creates nothing and refuses every write (the dashboard, the metrics endpoint).
    """

    def __init__(self, url: str, *, read_only: bool = False, connect_timeout: float = 10.0) -> None:
        psycopg = _driver()
        from psycopg.rows import dict_row

        self.url = url
        self.path = redacted(url)
        self.read_only = read_only
        try:
            self._reader = psycopg.connect(
                url, autocommit=True, row_factory=dict_row, connect_timeout=int(connect_timeout)
            )
            self._writer = None
            if read_only:
                self._reader.execute("SET default_transaction_read_only = on")
            else:
                self._writer = psycopg.connect(url, connect_timeout=int(connect_timeout))
                with self._writer.transaction():
                    self._writer.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                    self._writer.execute(SCHEMA)
        except psycopg.Error as e:
            raise DeliveryError(
                f"cannot open the fleet database {self.path}: {str(e).strip()}; check the URL, that PostgreSQL is "
                f"running and that the user may {'read' if read_only else 'create tables in'} that database"
            ) from e
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._retryable = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)
        self._undefined_table = psycopg.errors.UndefinedTable

    def close(self) -> None:
        with self._write_lock, self._read_lock:
            if self._writer is not None:
                self._writer.close()
            self._reader.close()

    # ------------------------------------------------------------------------------------------------- writing

    def record(self, topic: str, payload: bytes, received: float | None = None) -> str | None:
        """Store one device message; return its kind, or ``None`` for a malformed one (kept in ``malformed``)."""
        return self.record_many([(topic, payload, time.time() if received is None else received)])[0]

    def record_many(self, messages: list[tuple[str, bytes, float]]) -> list[str | None]:
        """Store (topic, payload, received) messages in one transaction (retried whole on a deadlock with another
        collector): when this returns, every one of them is committed."""
        self._writable()
        batch = _Batch()
        for topic, payload, received in messages:
            batch.add(topic, payload, received)
        with self._write_lock:
            for attempt in range(_RETRIES):
                try:
                    self._write(batch)
                    break
                except self._retryable as e:
                    if attempt == _RETRIES - 1:
                        raise
                    _log.info("collector: batch of %d messages retried (%s)", len(messages), type(e).__name__)
                    time.sleep(0.01 * (attempt + 1))
        return batch.kinds

    def _writable(self) -> None:
        if self._writer is None:
            raise DeliveryError(f"the fleet database {self.path} was opened read-only: nothing can be stored in it")

    def _write(self, batch: _Batch) -> None:
        db = self._writer
        with db.transaction(), db.cursor() as cur:
            if batch.touch:
                # every member of a group hears from every device: writing last_seen on each batch would lock the
                # same rows in every collector's transaction and run them one after another. Read first (no lock);
                # write only new devices, states, and a last_seen more than LAST_SEEN_RESOLUTION_S old, in one
                # order in every collector (fewer deadlocks between them).
                devices = sorted(batch.touch)
                cur.execute("SELECT device_id, last_seen FROM devices WHERE device_id = ANY(%s)", (devices,))
                known = dict(cur.fetchall())
                stale = [
                    d
                    for d in devices
                    if d in batch.states or (known.get(d) or 0.0) < batch.touch[d] - LAST_SEEN_RESOLUTION_S
                ]
                if stale:
                    cur.execute(_TOUCH, (stale, [batch.touch[d] for d in stale]))
            if batch.states:
                cur.executemany(_STATE, [batch.states[d][1] for d in sorted(batch.states)])
            if batch.lineage:
                cur.executemany(_LINEAGE, [batch.lineage[d][1] for d in sorted(batch.lineage)])
            if batch.telemetry:
                rows = sorted(batch.telemetry, key=lambda r: (r[0], r[1], r[2]))
                cur.execute(_INSERT_TELEMETRY, (json.dumps(rows),))
                duplicates = len(rows) - cur.rowcount
                if duplicates:
                    cur.execute(
                        "INSERT INTO counters VALUES ('duplicates', %s) "
                        "ON CONFLICT (name) DO UPDATE SET value = counters.value + excluded.value",
                        (duplicates,),
                    )
            if batch.events:
                cur.executemany(_EVENT, batch.events)
            if batch.malformed:
                cur.executemany("INSERT INTO malformed VALUES (%s, %s, %s)", batch.malformed)

    # ------------------------------------------------------------------------------------------------- reading

    def has_schema(self) -> bool:
        """Whether a collector has created the fleet's tables in this database yet (a read-only store creates
        nothing: one opened before any collector started reads as no fleet)."""
        (row,) = self._query("SELECT to_regclass('devices') IS NOT NULL AND to_regclass('telemetry') IS NOT NULL AS ok")
        return bool(row["ok"])

    def _query(self, sql: str, args: tuple | list = ()) -> list[dict[str, Any]]:
        with self._read_lock:
            return self._reader.execute(sql, args).fetchall()

    def _query_newer(self, sql: str, args: tuple | list = ()) -> list[dict[str, Any]]:
        """``_query`` of a table that a database written by an older fedge lacks (opened read-only, nothing was
        created): no rows."""
        try:
            return self._query(sql, args)
        except self._undefined_table:
            return []

    def lineage_rows(self) -> list[dict[str, Any]]:
        """Each device's ``device_lineage`` row (lineage as stored: JSON text); :func:`feedback.device_lineage`."""
        return self._query_newer("SELECT device_id, model_id, version, epsilon, lineage FROM device_lineage")

    def degraded_rows(self) -> list[dict[str, Any]]:
        """Every ``degraded`` row, oldest first (devices as stored: JSON text); :func:`feedback.degraded_events`."""
        return self._query_newer("SELECT * FROM degraded ORDER BY id")

    def group_telemetry(self, model_id: str, version: int, device_ids: list[str]) -> list[dict[str, Any]]:
        """What ``device_ids`` reported on ``model_id`` ``version``, oldest first (what the feedback monitor judges)."""
        return self._query(
            f"SELECT {GROUP_TELEMETRY_COLUMNS} FROM telemetry WHERE model_id = %s AND version = %s "
            "AND device_id = ANY(%s) ORDER BY received, seq",
            (model_id, version, list(device_ids)),
        )

    def add_degraded(self, row: tuple) -> bool:
        """Store a ``degraded`` event (:func:`feedback.degraded_record`) unless its model id and version already
        have one (stored by this collector or another of its group); return whether this call stored it."""
        self._writable()
        with self._write_lock, self._writer.transaction(), self._writer.cursor() as cur:
            cur.execute(_DEGRADED, row)
            return cur.rowcount == 1

    def set_degraded_action(self, model_id: str, version: int, action: str) -> None:
        """Record what was done about a group's ``degraded`` event (``rollback``, ``held: ...``)."""
        self._writable()
        with self._write_lock, self._writer.transaction(), self._writer.cursor() as cur:
            cur.execute(
                "UPDATE degraded SET action = %s WHERE model_id = %s AND version = %s", (action, model_id, version)
            )

    def devices(self) -> list[dict[str, Any]]:
        """One row per device: its state, model, last seen, and its latest telemetry (latency, accuracy)."""
        rows = self._query(
            """
            SELECT d.device_id, d.state, d.runtime, d.model_id, d.version, d.previous_version, d.session,
                   d.last_seen, d.last_update, t.latency_ms_p50, t.latency_ms_p95, t.accuracy, t.mean_confidence,
                   t.inferences
            FROM devices d LEFT JOIN LATERAL (
                SELECT latency_ms_p50, latency_ms_p95, accuracy, mean_confidence, inferences FROM telemetry
                WHERE telemetry.device_id = d.device_id ORDER BY received DESC, seq DESC LIMIT 1) t ON true
            ORDER BY d.device_id
            """
        )
        for row in rows:
            row["last_update"] = json.loads(row["last_update"]) if row.get("last_update") else None
        return rows

    def device(self, device_id: str) -> dict[str, Any] | None:
        return next((d for d in self.devices() if d["device_id"] == device_id), None)

    def device_states(self) -> dict[str, dict[str, Any]]:
        """Every device's state, runtime, model and version by id: one pass over ``devices``, no telemetry."""
        rows = self._query("SELECT device_id, state, runtime, model_id, version FROM devices")
        return {r["device_id"]: r for r in rows}

    def events(
        self, device_id: str | None = None, *, since: float = 0.0, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """As :meth:`edge.delivery.collector.FleetStore.events`."""
        where, args = (
            ("received >= %s", [since])
            if device_id is None
            else ("device_id = %s AND received >= %s", [device_id, since])
        )
        if limit is None:
            return self._query(f"SELECT * FROM events WHERE {where} ORDER BY id", args)
        return self._query(
            f"SELECT * FROM (SELECT * FROM events WHERE {where} ORDER BY id DESC LIMIT %s) AS e ORDER BY id",
            [*args, limit],
        )

    def version_stats(self, device_ids: list[str], version: int, *, since: float = 0.0) -> VersionStats:
        if not device_ids:
            return VersionStats(0, 0, 0, 0, 0)
        (row,) = self._query(
            "SELECT count(*) AS n, coalesce(sum(inferences), 0) AS i, coalesce(sum(errors), 0) AS e, "
            "coalesce(sum(labelled), 0) AS l, coalesce(sum(correct), 0) AS c FROM telemetry "
            "WHERE version = %s AND received >= %s AND device_id = ANY(%s)",
            (version, since, list(device_ids)),
        )
        return VersionStats(*(int(v) for v in row.values()))

    def reports_since(self, device_id: str, version: int, since: float) -> int:
        return self.report_counts([device_id], version, since).get(device_id, 0)

    def report_counts(self, device_ids: list[str], version: int, since: float) -> dict[str, int]:
        """Telemetry messages on ``version`` received at or after ``since``, per device (one query for all)."""
        rows = self._query(
            "SELECT device_id, count(*) AS n FROM telemetry WHERE version = %s AND received >= %s "
            "AND device_id = ANY(%s) GROUP BY device_id",
            (version, since, list(device_ids)),
        )
        return {r["device_id"]: int(r["n"]) for r in rows}

    def sequence_report(self) -> dict[str, int]:
        """Telemetry received, lost (gaps in sequence numbers, per device and session, whichever collector stored
        them) and duplicates dropped (across every collector)."""
        (row,) = self._query(
            "SELECT coalesce(sum(n), 0) AS received, coalesce(sum(top - n), 0) AS lost FROM ("
            "SELECT count(*) AS n, max(seq) AS top FROM telemetry GROUP BY device_id, session) s"
        )
        dup = self._query("SELECT value FROM counters WHERE name = 'duplicates'")
        return {
            "received": int(row["received"]),
            "lost": int(row["lost"]),
            "duplicates": int(dup[0]["value"]) if dup else 0,
        }

    def malformed(self) -> list[dict[str, Any]]:
        return self._query("SELECT * FROM malformed ORDER BY received")

    def telemetry(self, *, since: float = 0.0, limit: int = 5000) -> list[dict[str, Any]]:
        """The latest ``limit`` telemetry messages received at or after ``since``, oldest first (no histograms)."""
        return self._query(
            "SELECT * FROM (SELECT device_id, session, seq, ts, received, model_id, version, inferences, errors, "
            "labelled, correct, latency_ms_p50, latency_ms_p95, mean_confidence, accuracy FROM telemetry "
            "WHERE received >= %s ORDER BY received DESC, seq DESC LIMIT %s) t ORDER BY received, seq",
            (since, limit),
        )

    def event_counts(self) -> list[dict[str, Any]]:
        """How many update outcomes of each kind (applied, rejected, rolled-back) and reason the devices reported."""
        return self._query(
            "SELECT outcome, reason, count(*) AS n FROM events GROUP BY outcome, reason ORDER BY outcome, reason"
        )

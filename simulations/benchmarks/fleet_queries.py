"""What a fleet database costs to read as it grows: one poll of the dashboard (and the metrics' reads) on a fleet of
``--devices`` devices that sent ``--messages`` telemetry reports each, with the two telemetry indexes the stores
create (each device's latest report; the fleet's latest reports) against the same database without them, and what
those indexes cost every insert.

- The fleet: every device in ``devices``, its reports in ``telemetry`` (one session, sequence numbers 1..N, received
  in order) and three update events each, written straight into the schema the store creates (SQLite, and
  PostgreSQL where it is installed: a throwaway local server).
- Reads, timed in this process: the whole dashboard poll (:meth:`simulations.dashboard.data.DashboardData.fleet`,
  what the open page asks for every few seconds) and the store calls in it that touch telemetry: ``devices()``
  (each device's latest report; also read by every metrics scrape), ``telemetry(limit=3000)`` (the fleet's latest
  reports, for the charts), ``sequence_report()`` (received, lost).
- Inserts: ``record_many`` of ``--insert-messages`` real telemetry payloads (the agent's format; batches of 500, as a
  collector writes them) into the grown fleet; CPU per message of this process and, for PostgreSQL, of the server's
  processes.
- Each repeat measures both ways side by side: with the indexes, then after ``DROP INDEX``, then the indexes are
  built again. The median of the repeats is reported.

    python -m simulations.benchmarks.fleet_queries [--devices 2000] [--messages 250] [--repeats 3] [--store both]
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from simulations.benchmarks.common import (
    PostgresServer,
    Row,
    load_average,
    load_settings,
    postgres_bin,
    write_results,
)

#: the indexes the stores create for what the dashboard reads (edge/delivery/collector.py and postgres_store.py)
INDEXES = {
    "telemetry_device_received": "telemetry (device_id, received, seq)",
    "telemetry_received": "telemetry (received, seq)",
}
BATCH = 500


class Fleet:
    """One fleet database of either kind: its URL or path, a connection for SQL of the benchmark's own, and the
    SQL dialect's placeholder."""

    def __init__(self, kind: str, where: str) -> None:
        from edge.delivery.collector import open_fleet_store

        self.kind, self.where = kind, where
        open_fleet_store(where).close()  # the store's own schema, indexes included
        if kind == "postgres":
            import psycopg

            self.conn: Any = psycopg.connect(where, autocommit=True)
        else:
            self.conn = sqlite3.connect(where, isolation_level=None)

    def execute(self, sql: str, args: tuple = ()) -> None:
        self.conn.execute(sql if self.kind == "postgres" else sql.replace("%s", "?"), args)

    def fill(self, devices: int, messages: int, start: float) -> None:
        """``devices`` devices with ``messages`` reports each (received in order, 10 ms apart per device)."""
        if self.kind == "postgres":
            self.execute(
                "INSERT INTO devices (device_id, state, model_id, version, session, last_seen) "
                "SELECT format('dev-%%s', lpad(i::text, 5, '0')), 'running', 'bench', 2, 's1', %s "
                "FROM generate_series(0, %s - 1) i",
                (start + messages, devices),
            )
            self.execute(
                "INSERT INTO telemetry SELECT format('dev-%%s', lpad(i::text, 5, '0')), 's1', s, %s + s, "
                "%s + s + i * 1e-6, 'bench', 2, 10 * s, 0, 5 * s, 4 * s, 1.5, 3.0, 0.9, 0.8, NULL "
                "FROM generate_series(1, %s) s, generate_series(0, %s - 1) i",
                (start, start, messages, devices),
            )
            self.execute(
                "INSERT INTO events (device_id, ts, received, outcome, reason, model_id, version) "
                "SELECT format('dev-%%s', lpad(i::text, 5, '0')), %s + k, %s + k, 'applied', '', 'bench', k "
                "FROM generate_series(0, %s - 1) i, generate_series(1, 3) k",
                (start, start, devices),
            )
            self.execute("ANALYZE")
            return
        names = [f"dev-{i:05d}" for i in range(devices)]
        self.execute("BEGIN")
        self.conn.executemany(
            "INSERT INTO devices (device_id, state, model_id, version, session, last_seen) "
            "VALUES (?, 'running', 'bench', 2, 's1', ?)",
            [(d, start + messages) for d in names],
        )
        self.conn.executemany(
            "INSERT INTO telemetry VALUES (?, 's1', ?, ?, ?, 'bench', 2, ?, 0, ?, ?, 1.5, 3.0, 0.9, 0.8, NULL)",
            (
                (d, s, start + s, start + s + i * 1e-6, 10 * s, 5 * s, 4 * s)
                for s in range(1, messages + 1)
                for i, d in enumerate(names)
            ),
        )
        self.conn.executemany(
            "INSERT INTO events (device_id, ts, received, outcome, reason, model_id, version) "
            "VALUES (?, ?, ?, 'applied', '', 'bench', ?)",
            [(d, start + k, start + k, k) for d in names for k in (1, 2, 3)],
        )
        self.execute("COMMIT")
        self.execute("ANALYZE")

    def drop_indexes(self) -> None:
        for name in INDEXES:
            self.execute(f"DROP INDEX {name}")

    def create_indexes(self) -> None:
        for name, on in INDEXES.items():
            self.execute(f"CREATE INDEX {name} ON {on}")
        self.execute("ANALYZE")

    def close(self) -> None:
        self.conn.close()


def _seconds(call: Callable[[], Any]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def reads(fleet: Fleet, runs_dir: Path) -> dict[str, float]:
    """Seconds for one dashboard poll and for each of its reads of telemetry."""
    from edge.delivery.collector import open_fleet_store
    from simulations.dashboard.data import TELEMETRY_ROWS, DashboardData

    data = DashboardData(runs_dir, fleet_db=fleet.where)
    out = {"dashboard poll": _seconds(lambda: data.fleet(fleet.where))}
    store = open_fleet_store(fleet.where, read_only=True)
    try:
        out["devices()"] = _seconds(store.devices)
        out[f"telemetry(limit={TELEMETRY_ROWS})"] = _seconds(lambda: store.telemetry(limit=TELEMETRY_ROWS))
        out["sequence_report()"] = _seconds(store.sequence_report)
    finally:
        store.close()
    return out


def inserts(fleet: Fleet, devices: int, count: int, session: str) -> dict[str, float]:
    """CPU microseconds per message to store ``count`` real reports (a new session for the first devices)."""
    from edge.agent.protocol import telemetry_topic
    from edge.delivery.collector import open_fleet_store
    from simulations.benchmarks.mqtt_telemetry import GroupCpu, telemetry_payload

    names = [f"dev-{i:05d}" for i in range(min(devices, 100))]
    own_session = f'"session":"{session}"'.encode()  # a session of its own per call: every message is new
    now = time.time()
    messages = [
        (telemetry_topic(d), telemetry_payload(d, s).replace(b'"session":"bench"', own_session), now + s * 0.01)
        for s in range(1, count // len(names) + 1)
        for d in names
    ]
    server = GroupCpu({"database server": lambda q: q.name() == "postgres"})
    store = open_fleet_store(fleet.where)
    try:
        server.start()
        own = time.process_time()
        for i in range(0, len(messages), BATCH):
            store.record_many(messages[i : i + BATCH])
        own = time.process_time() - own
        used = server.stop()["database server"]
    finally:
        store.close()
    return {"collector": own / len(messages) * 1e6, "database server": used / len(messages) * 1e6}


@contextlib.contextmanager
def schema_without_indexes() -> Iterator[None]:
    """The stores' schema without :data:`INDEXES` while inside (a store opened for writing creates what its schema
    lacks: the plain runs must not build the indexes again)."""
    from edge.delivery import collector, postgres_store

    saved = collector.SCHEMA, postgres_store.SCHEMA
    try:
        for module in (collector, postgres_store):
            lines = module.SCHEMA.splitlines()
            module.SCHEMA = "\n".join(x for x in lines if not any(f"INDEX IF NOT EXISTS {n} " in x for n in INDEXES))
            assert module.SCHEMA.count("CREATE INDEX IF NOT EXISTS telemetry") == 0, module.__name__
        yield
    finally:
        collector.SCHEMA, postgres_store.SCHEMA = saved


def measure(kind: str, where: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    fleet = Fleet(kind, where)
    try:
        start = time.perf_counter()
        fleet.fill(args.devices, args.messages, time.time() - args.messages)
        built = time.perf_counter() - start
        runs: dict[str, list[dict[str, Any]]] = {"indexed": [], "plain": []}
        for i in range(args.repeats):
            for way in ("indexed", "plain"):
                if way == "plain":
                    fleet.drop_indexes()
                with schema_without_indexes() if way == "plain" else contextlib.nullcontext():
                    r = reads(fleet, work)
                    r["insert CPU"] = inserts(fleet, args.devices, args.insert_messages, f"bench-{way}-{i}")
                runs[way].append(r)
                print(f"{kind} {way} {i}: " + ", ".join(f"{k} {v}" for k, v in r.items()), flush=True)
                if way == "plain":
                    fleet.create_indexes()
        return {"built_seconds": built, "runs": runs}
    finally:
        fleet.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m simulations.benchmarks.fleet_queries", description=__doc__.split("\n")[0]
    )
    p.add_argument("--devices", type=int, default=2000)
    p.add_argument("--messages", type=int, default=250, help="telemetry reports per device already stored")
    p.add_argument("--insert-messages", type=int, default=20000, help="reports stored per insert measurement")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--store", choices=("sqlite", "postgres", "both"), default="both")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if min(args.devices, args.messages, args.insert_messages, args.repeats) < 1:
        p.error("--devices, --messages, --insert-messages and --repeats must be at least 1")
    kinds = ["sqlite", "postgres"] if args.store == "both" else [args.store]
    if "postgres" in kinds and postgres_bin() is None:
        if args.store == "postgres":
            p.error("PostgreSQL is not installed: apt-get install postgresql")
        kinds.remove("postgres")
    load_at_start = load_average()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="fedge-bench-queries-") as tmp:
        work = Path(tmp)
        for kind in kinds:
            if kind == "postgres":
                with PostgresServer() as pg:
                    results[kind] = measure(kind, pg.create_database("fleet"), args, work)
            else:
                results[kind] = measure(kind, str(work / "fleet.db"), args, work)
    rows = []
    reports = args.devices * args.messages
    for kind, r in results.items():
        name = {"sqlite": "SQLite", "postgres": "PostgreSQL"}[kind]
        for read in r["runs"]["indexed"][0]:
            if read == "insert CPU":
                continue
            with_, without = (statistics.median(x[read] for x in r["runs"][w]) for w in ("indexed", "plain"))
            rows.append(
                Row.compare(
                    f"{name}, {args.devices:,} devices x {args.messages} reports: {read}",
                    round(with_, 4),
                    "s",
                    "without the indexes",
                    round(without, 4),
                )
            )
        for part in r["runs"]["indexed"][0]["insert CPU"]:
            if kind == "sqlite" and part == "database server":
                continue
            with_, without = (
                statistics.median(x["insert CPU"][part] for x in r["runs"][w]) for w in ("indexed", "plain")
            )
            rows.append(
                Row.compare(
                    f"{name}: CPU per stored report, {part} (record_many into the grown fleet)",
                    round(with_, 1),
                    "us",
                    "without the indexes",
                    round(without, 1),
                )
            )
    settings = {
        "devices": args.devices,
        "reports_per_device": args.messages,
        "reports": reports,
        "events_per_device": 3,
        "insert_messages": args.insert_messages,
        "insert_batch": BATCH,
        "repeats": args.repeats,
        "indexes": INDEXES,
        "order": "per repeat: reads and inserts with the indexes, DROP INDEX, reads and inserts, CREATE INDEX",
        "results": results,
        **load_settings(load_at_start),
    }
    write_results("fleet_queries", rows, out=args.out, settings=settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

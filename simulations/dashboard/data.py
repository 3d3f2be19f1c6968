"""What the dashboard shows, read from a runs directory and a fleet database: plain dicts, ready for JSON.

No torch, no Flower: run records are read through :class:`shared_models.run_dir.RunDir` (JSON only), artifacts from
their descriptions (``artifacts/<file>.json``), the fleet through a read-only store
(:func:`~edge.delivery.collector.open_fleet_store`: a SQLite file, or PostgreSQL for a group of collectors; imported
when a fleet is read, so a runs-only dashboard needs no MQTT client). Everything is read again on each call (files
the server rewrites per round are cached by modification time), so the page follows a run, a rollout or telemetry
while they happen. Nothing here writes.

>>> import tempfile
>>> data = DashboardData(tempfile.mkdtemp())
>>> data.overview()["runs"], data.overview()["fleet"]["devices"]
([], [])
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.delivery.fleet_db import as_fleet_db, is_postgres_url, redacted
from shared_models.errors import FedgeError
from shared_models.run_dir import RunDir

#: what a run id may look like in a URL (a directory name under the runs directory, never a path)
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
ARTIFACT_SCHEMA = "fedge-artifact/1"
#: a run that has not written for this long (and at least 3 of its rounds' durations) is not running any more
RUNNING_GRACE_S = 120.0
TELEMETRY_ROWS = 3000
EVENT_ROWS = 60

_ROUND_FIELDS = (
    "round",
    "central-accuracy",
    "central-loss",
    "train-loss",
    "epsilon-max",
    "epsilon-mean",
    "clients-sampled",
    "clients-trained",
    "clients-refused",
    "clients-failed",
    "clients-timed-out",
    "seconds",
    "resumed",
)
_CONFIG_FIELDS = (
    "model",
    "dataset",
    "partitioner",
    "strategy",
    "num-server-rounds",
    "dp",
    "target-epsilon",
    "target-delta",
    "noise-multiplier",
    "max-grad-norm",
    "local-epochs",
    "batch-size",
    "learning-rate",
    "seed",
)


class DashboardError(FedgeError):
    """The dashboard cannot start or serve (bad options, an address it may not listen on)."""


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinity (which JSON cannot carry) replaced by ``None``, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


@dataclass
class _JsonCache:
    """JSON files by path, read again only when their modification time or size changes."""

    entries: dict[Path, tuple[tuple[int, int], Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def read(self, path: Path) -> Any:
        try:
            st = path.stat()
        except OSError:
            return None
        key = (st.st_mtime_ns, st.st_size)
        with self.lock:
            hit = self.entries.get(path)
        if hit is not None and hit[0] == key:
            return hit[1]
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return hit[1] if hit is not None else None  # being replaced right now: keep what was last read
        with self.lock:
            self.entries[path] = (key, value)
        return value


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


class DashboardData:
    """Readers over ``runs_dir`` and a fleet database.

    ``fleet_db``: a fleet database to show whatever run is selected (a SQLite file, or the ``postgresql://`` URL
    of the database a group of collectors writes); without it, the selected run's own ``edge/fleet.db`` (what the
    demo writes), else the newest run's that has one.
    """

    def __init__(self, runs_dir: str | Path, fleet_db: str | Path | None = None) -> None:
        self.runs_dir = Path(runs_dir)
        self.fleet_db = None if fleet_db is None else as_fleet_db(fleet_db)
        self._cache = _JsonCache()

    # ------------------------------------------------------------------------------------------------------ runs

    def _run_dirs(self) -> list[RunDir]:
        if not self.runs_dir.is_dir():
            return []
        found = []
        for path in self.runs_dir.iterdir():
            if path.is_dir() and RUN_ID.fullmatch(path.name) and RunDir(path).config.is_file():
                found.append(RunDir(path))
        return found

    def run_dir(self, run_id: str) -> RunDir | None:
        """The run ``run_id`` under the runs directory, or ``None`` (also for anything that is not a plain name)."""
        if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
            return None
        run = RunDir(self.runs_dir / run_id)
        return run if run.config.is_file() else None

    def _rounds(self, run: RunDir) -> list[dict[str, Any]]:
        payload = self._cache.read(run.metrics)
        rounds = payload.get("rounds") if isinstance(payload, dict) else None
        return rounds if isinstance(rounds, list) else []

    def _summary(self, run: RunDir, now: float) -> dict[str, Any]:
        config = self._cache.read(run.config) or {}
        rounds = self._rounds(run)
        last = rounds[-1] if rounds else {}
        fleet_db = run.fleet_db  # in WAL mode, writes land in fleet.db-wal first
        updated = max(
            _mtime(run.metrics),
            _mtime(run.config),
            _mtime(fleet_db),
            _mtime(fleet_db.with_name(fleet_db.name + "-wal")),
        )
        finished = run.is_finished()
        round_s = max((r.get("seconds") or 0.0 for r in rounds[-3:]), default=0.0)
        if finished:
            status = "finished"
        elif now - updated <= max(RUNNING_GRACE_S, 3 * round_s):
            status = "running"
        else:
            status = "stopped"
        demo = self._cache.read(run.demo_summary)
        edge_live = fleet_db.is_file() and demo is None and now - updated <= RUNNING_GRACE_S
        if finished and edge_live:
            status = "delivering"
        return {
            "id": run.path.name,
            "status": status,
            "updated": updated,
            "rounds-done": max((r.get("round", 0) for r in rounds), default=0),
            "rounds-total": config.get("num-server-rounds"),
            "initial-accuracy": rounds[0].get("central-accuracy") if rounds else None,
            "accuracy": last.get("central-accuracy"),
            "epsilon": last.get("epsilon-max"),
            "dp": config.get("dp"),
            "target-epsilon": config.get("target-epsilon"),
            "target-delta": config.get("target-delta"),
            "model": config.get("model"),
            "dataset": config.get("dataset"),
            "strategy": config.get("strategy"),
            "artifacts": run.artifacts.is_dir() and any(run.artifacts.glob("*.json")),
            "fleet": run.fleet_db.is_file(),
        }

    def runs(self) -> list[dict[str, Any]]:
        """Every run under the runs directory, newest first."""
        now = time.time()
        summaries = [self._summary(run, now) for run in self._run_dirs()]
        return sorted(summaries, key=lambda s: (s["updated"], s["id"]), reverse=True)

    def run(self, run_id: str) -> dict[str, Any] | None:
        """One run in full: settings, rounds, privacy ledger, refusals and failures, artifacts, rollouts."""
        run = self.run_dir(run_id)
        if run is None:
            return None
        config = self._cache.read(run.config) or {}
        rounds = self._rounds(run)
        privacy = self._cache.read(run.privacy) or {}
        clients = privacy.get("clients") or {}
        refusals = [
            {"client": cid, "round": r, "reason": c.get("last-refusal", "")}
            for cid, c in clients.items()
            for r in c.get("refused-rounds", [])
        ]
        failures = [
            {"round": r.get("round"), "node": str(node), "reason": str(reason)}
            for r in rounds
            for node, reason in (r.get("failures") or {}).items()
        ]
        timed_out = [
            {"round": r.get("round"), "count": r["clients-timed-out"]} for r in rounds if r.get("clients-timed-out")
        ]
        return {
            **self._summary(run, time.time()),
            "config": {k: config[k] for k in _CONFIG_FIELDS if k in config},
            "rounds": [{k: r.get(k) for k in _ROUND_FIELDS if k in r} for r in rounds],
            "privacy": {
                "enabled": privacy.get("enabled", bool(config.get("dp"))),
                "target-epsilon": privacy.get("target-epsilon", config.get("target-epsilon")),
                "delta": privacy.get("delta", config.get("target-delta")),
                "max-epsilon": privacy.get("max-epsilon"),
                "clients": [
                    {
                        "client": cid,
                        "epsilon": c.get("epsilon"),
                        "rounds": c.get("rounds", []),
                        "epsilons": c.get("epsilons", []),
                        "refused-rounds": c.get("refused-rounds", []),
                        "last-refusal": c.get("last-refusal", ""),
                    }
                    for cid, c in clients.items()
                ],
            },
            "refusals": refusals,
            "failures": failures,
            "timed-out": timed_out,
            "artifacts": self.artifacts(run),
            "package": self._package(run),
            "rollouts": self.rollouts(run),
            "demo": self._demo(run),
        }

    def artifacts(self, run: RunDir) -> list[dict[str, Any]]:
        """Each artifact's description, with its size and latency against the fp32 artifact of its format."""
        rows = []
        for path in sorted(run.artifacts.glob("*.json")) if run.artifacts.is_dir() else []:
            d = self._cache.read(path)
            if not isinstance(d, dict) or d.get("schema") != ARTIFACT_SCHEMA:
                continue
            m = d.get("metrics") or {}
            rows.append(
                {
                    "file": d.get("file"),
                    "format": d.get("format"),
                    "variant": d.get("variant"),
                    "dtype": d.get("dtype"),
                    "size-bytes": d.get("size-bytes"),
                    "gzip-size-bytes": d.get("gzip-size-bytes"),
                    "parameters": d.get("parameters"),
                    "accuracy": m.get("accuracy"),
                    "agreement": m.get("top1-agreement"),
                    "agreement-with-original": m.get("agreement-with-original"),
                    "latency-ms": m.get("latency-ms"),
                    "sha256": d.get("sha256"),
                    "created": d.get("created"),
                }
            )
        base = {a["format"]: a for a in rows if a["variant"] == "fp32"}
        for a in rows:
            b = base.get(a["format"])
            for key, ratio in (("size-bytes", "size-ratio"), ("latency-ms", "latency-ratio")):
                a[ratio] = a[key] / b[key] if b and a.get(key) is not None and b.get(key) else None
        return sorted(rows, key=lambda a: (a["format"] or "", a["variant"] != "fp32", a["variant"] or ""))

    def _package(self, run: RunDir) -> dict[str, Any] | None:
        payload = self._cache.read(run.artifacts / "package.json")
        if not isinstance(payload, dict):
            return None
        return {"notes": payload.get("notes", []), "compression": payload.get("compression", {})}

    def rollouts(self, run: RunDir) -> list[dict[str, Any]]:
        """The rollouts recorded for the run (the demo's ``edge/rollouts.json``), oldest first."""
        payload = self._cache.read(run.rollouts)
        return [r for r in payload if isinstance(r, dict)] if isinstance(payload, list) else []

    def _demo(self, run: RunDir) -> dict[str, Any] | None:
        payload = self._cache.read(run.demo_summary)
        if not isinstance(payload, dict):
            return None
        return {k: payload.get(k) for k in ("broker", "devices", "model_id", "on_int8", "telemetry", "seconds")}

    # ----------------------------------------------------------------------------------------------------- fleet

    def fleet_db_for(self, run_id: str | None, runs: list[dict[str, Any]] | None = None) -> str | Path | None:
        """The fleet database to show: ``--fleet``, else the run's own, else the newest run's that has one."""
        if self.fleet_db is not None:
            return self.fleet_db
        run = self.run_dir(run_id) if run_id else None
        if run is not None and run.fleet_db.is_file():
            return run.fleet_db
        for summary in runs if runs is not None else self.runs():
            if summary["fleet"]:
                return RunDir.of(self.runs_dir, summary["id"]).fleet_db
        return None

    def fleet(self, db: str | Path | None) -> dict[str, Any]:
        """Devices, telemetry over time, update events and message counts of the fleet database ``db`` (a SQLite
        file or a ``postgresql://`` URL, shown without its password)."""
        empty = {
            "source": None if db is None else redacted(str(db)),
            "devices": [],
            "telemetry": [],
            "events": [],
            "event-counts": [],
            "sequence": {"received": 0, "lost": 0, "duplicates": 0},
            "malformed": 0,
        }
        if db is None or not (is_postgres_url(db) or Path(db).is_file()):
            return empty
        from edge.delivery.collector import open_fleet_store

        try:
            store = open_fleet_store(db, read_only=True)
        except FedgeError as e:  # a PostgreSQL server that is down or refuses: the message names the database
            return {**empty, "error": str(e)}
        except (OSError, sqlite3.Error) as e:
            return {**empty, "error": f"cannot open {db}: {e}"}
        try:
            if not store.has_schema():
                return {**empty, "error": f"no collector has written {store.path} yet (fedge fleet collect --db)"}
            from edge.delivery.feedback import degraded_events, device_lineage

            devices = store.devices()
            lineage = device_lineage(store)
            for d in devices:  # each device's model ε, from the signed lineage its retained state carried
                known = lineage.get(d["device_id"]) or {}
                d["epsilon"] = known.get("epsilon") if known.get("version") == d.get("version") else None
            events = store.events(limit=EVENT_ROWS)
            return {
                **empty,
                "devices": devices,
                "degraded": degraded_events(store),
                "telemetry": store.telemetry(limit=TELEMETRY_ROWS),
                "events": events[::-1],
                "event-counts": store.event_counts(),
                "sequence": store.sequence_report(),
                "malformed": len(store.malformed()),
            }
        except Exception as e:  # noqa: BLE001 - a database being created right now: show it on the next poll
            return {**empty, "error": f"cannot read {redacted(str(db))}: {e}"}
        finally:
            store.close()

    # -------------------------------------------------------------------------------------------------- overview

    def overview(self, run_id: str | None = None) -> dict[str, Any]:
        """All the page needs in one poll: the runs, the selected run (``run_id``, else the newest) and its fleet."""
        runs = self.runs()
        selected = run_id if run_id and self.run_dir(run_id) is not None else (runs[0]["id"] if runs else None)
        return finite(
            {
                "now": time.time(),
                "runs-dir": str(self.runs_dir),
                "runs": runs,
                "selected": selected,
                "run": self.run(selected) if selected else None,
                "fleet": self.fleet(self.fleet_db_for(selected, runs)),
            }
        )

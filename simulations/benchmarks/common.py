"""What every benchmark shares: the machine it ran on, result rows, JSON and a markdown table.

Each row is ``{"measure", "value", "unit", "baseline", "baseline_value", "ratio"}``; the JSON file adds the
machine (cores, CPU model), the date and the benchmark's own settings.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).parent / "results"
SHARED_MNIST = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mnist"


@dataclass
class Row:
    measure: str
    value: float
    unit: str
    baseline: str = ""
    baseline_value: float | None = None
    ratio: float | None = None

    @classmethod
    def compare(cls, measure: str, value: float, unit: str, baseline: str, baseline_value: float) -> Row:
        ratio = value / baseline_value if baseline_value else None
        return cls(measure, value, unit, baseline, baseline_value, ratio)


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": cpu, "python": platform.python_version(), "platform": platform.platform()}


def markdown_table(rows: list[Row]) -> str:
    def fmt(v: float | None) -> str:
        if v is None:
            return ""
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| measure | value | unit | baseline | baseline value | ratio |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r.measure} | {fmt(r.value)} | {r.unit} | {r.baseline} | {fmt(r.baseline_value)} | {fmt(r.ratio)} |"
        )
    return "\n".join(lines)


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy so far (every core, every process: neither idle nor waiting on
    I/O)."""
    import psutil

    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def load_average() -> list[float]:
    """The machine's 1, 5 and 15 minute load averages, rounded."""
    return [round(v, 2) for v in os.getloadavg()]


def load_settings(at_start: list[float]) -> dict[str, Any]:
    """What a benchmark's settings say about how busy the machine was: its niceness, the load averages at the start
    (``at_start``, from :func:`load_average`) and now."""
    return {
        "nice": os.nice(0),
        "load_average_1_5_15_min_at_start": at_start,
        "load_average_1_5_15_min_at_end": load_average(),
        "note": "2 cores shared with other work: the load average says how much",
    }


def write_results(
    name: str, rows: list[Row], *, out: Path | None = None, settings: dict[str, Any] | None = None
) -> Path:
    """Print the markdown table and write JSON (default ``simulations/benchmarks/results/NAME.json``) and ``.md``."""
    out = out or RESULTS_DIR / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": settings or {},
        "rows": [asdict(r) for r in rows],
    }
    out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    table = markdown_table(rows)
    out.with_suffix(".md").write_text(
        f"# {name}\n\n{payload['date']}, {payload['machine']['cpu']} "
        f"({payload['machine']['cores']} cores)\n\n{table}\n",
        encoding="utf-8",
    )
    print(table)
    print(f"\nwritten: {out}")
    return out


def base_parser(name: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m simulations.benchmarks.{name}", description=description)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / f"{name}.json", help="JSON output path")
    parser.add_argument(
        "--mnist",
        type=Path,
        default=SHARED_MNIST,
        help="directory of the MNIST IDX files (default: ../shared/data/mnist)",
    )
    return parser


def loopback_broker(kind: str, work: Path, devices: list[str]) -> tuple[Any, Any]:
    """An MQTT broker for a benchmark on a free loopback port, not yet started: ``mosquitto`` (password file, ACL,
    one login per device) or the embedded amqtt broker as its own process. Returns ``(broker, server address)``;
    every device's URL goes to ``work/credentials.json``."""
    from edge.delivery.brokers import EmbeddedBrokerProcess, free_port
    from edge.delivery.mosquitto import SERVER_USER, MosquittoProcess, write_mosquitto_files

    port = free_port()
    if kind == "mosquitto":
        setup = write_mosquitto_files(work / "mosquitto", port=port, devices=devices)
        broker: Any = MosquittoProcess(setup)
        urls = {u: setup.address(u).url(with_password=True) for u in setup.passwords}
        server = setup.address(SERVER_USER)
    else:
        broker = EmbeddedBrokerProcess(port, log_file=work / "broker.log")
        urls = {d: f"mqtt://127.0.0.1:{port}" for d in devices}
        server = broker.address()
    (work / "credentials.json").write_text(json.dumps(urls))
    return broker, server


def postgres_bin() -> Path | None:
    """Debian's PostgreSQL server programs (``apt-get install postgresql``: /usr/lib/postgresql/VERSION/bin), the
    newest version first; ``None`` when none is installed."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]), reverse=True)
    return found[0].parent if found else None


class PostgresServer:
    """A throwaway PostgreSQL cluster on a loopback port in a temporary directory (``initdb`` + ``pg_ctl``), for
    tests and benchmarks: trust authentication for loopback only, fsync off (nothing here must survive a crash of
    the machine; every commit still goes through the server). Run as root, the server runs as the ``postgres``
    user (``initdb`` refuses root).

        with PostgresServer() as pg:
            url = pg.create_database("fleet")
    """

    def __init__(self, directory: Path | None = None) -> None:
        import getpass
        import tempfile

        self.bin = postgres_bin()
        if self.bin is None:
            raise RuntimeError("PostgreSQL is not installed: apt-get install postgresql")
        self._tmp = None if directory else tempfile.TemporaryDirectory(prefix="fedge-pg-")
        self.directory = Path(directory or self._tmp.name)
        self.data = self.directory / "data"
        self.port = 0
        self.user = "postgres" if os.geteuid() == 0 else getpass.getuser()

    def _run(self, *args: str, check: bool = True) -> Any:
        import subprocess

        cmd = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=120)

    def start(self) -> PostgresServer:
        import shutil

        from edge.delivery.brokers import free_port

        self.directory.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        self.port = free_port()
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = f"-h 127.0.0.1 -p {self.port} -k {self.directory} -c fsync=off -c max_connections=200"
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.directory / "server.log"), "-o", options, "-w", "start"
        )
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create database ``name`` (dropped first if it exists) and return its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            db.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.port and self.data.exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class CpuQuota:
    """A CPU limit of ``cores`` for the processes :meth:`add` puts in it, as a container's CPU limit sets one: a
    Linux cgroup of its own under ``root`` (cgroup v2 ``cpu.max``, or v1 ``cpu/cpu.cfs_quota_us``). Needs root, or
    a cgroup delegated to this user. Remove it (:meth:`close`) once its processes have exited.

        with CpuQuota("collector-0", 0.4) as quota:
            quota.add(process.pid)
    """

    PERIOD_US = 100_000

    def __init__(self, name: str, cores: float, root: Path = Path("/sys/fs/cgroup")) -> None:
        if not cores > 0:
            raise ValueError(f"a CPU limit must be more than 0 cores, not {cores}")
        quota = max(1000, round(cores * self.PERIOD_US))
        controllers = root / "cgroup.controllers"
        if controllers.is_file() and "cpu" in controllers.read_text().split():  # v2
            base, files = root, {"cpu.max": f"{quota} {self.PERIOD_US}"}
            enabled = root / "cgroup.subtree_control"
            if "cpu" not in enabled.read_text().split():
                self._write(enabled, "+cpu")
        elif (root / "cpu" / "cpu.cfs_quota_us").is_file():  # v1
            base = root / "cpu"
            files = {"cpu.cfs_period_us": str(self.PERIOD_US), "cpu.cfs_quota_us": str(quota)}
        else:
            raise RuntimeError(
                f"no cgroup CPU controller under {root}: a CPU limit needs Linux cgroups (v2 with the cpu controller, "
                "or v1's cpu hierarchy); run without the limit"
            )
        self.cores = cores
        self.path = base / f"fedge-{name}-{os.getpid()}"
        try:
            self.path.mkdir()
        except OSError as e:
            raise RuntimeError(
                f"cannot create the cgroup {self.path} ({e.strerror}): a CPU limit needs root, or a cgroup delegated "
                "to this user; run without the limit"
            ) from e
        for file, value in files.items():
            self._write(self.path / file, value)

    @staticmethod
    def _write(path: Path, value: str) -> None:
        try:
            path.write_text(value)
        except OSError as e:
            raise RuntimeError(
                f"cannot write {value!r} to {path} ({e.strerror}): run as root, or without a limit"
            ) from e

    def add(self, pid: int) -> None:
        """Move process ``pid`` (every thread of it) under the limit."""
        self._write(self.path / "cgroup.procs", str(pid))

    def close(self) -> None:
        """Remove the cgroup (its processes must have exited; the kernel may take a moment to let it go)."""
        import time

        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)

    def __enter__(self) -> CpuQuota:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

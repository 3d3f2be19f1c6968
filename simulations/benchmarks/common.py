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

"""What every packaged artifact must satisfy, and ``fedge`` run as a user runs it: shared by the export tests and the
end-to-end packaging test in tests/integration."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
MANIFEST_KEYS = {"format", "dtype", "input", "output", "sha256", "size-bytes", "gzip-size-bytes", "metrics", "file"}


def check_description(out: Path, description: dict) -> None:
    data = (out / description["file"]).read_bytes()
    assert description["sha256"] == hashlib.sha256(data).hexdigest()
    assert description["size-bytes"] == len(data)
    assert MANIFEST_KEYS <= set(description)
    assert json.loads((out / f"{description['file']}.json").read_text()) == description
    metrics = description["metrics"]
    assert 0 <= metrics["accuracy"] <= 1 and 0 <= metrics["top1-agreement"] <= 1
    assert metrics["latency-ms"] > 0 and metrics["latency-threads"] == 1


def fedge(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "simulations.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        env={**os.environ, "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "COLUMNS": "200"},
    )

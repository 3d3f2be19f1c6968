"""The description written next to every artifact (``<file>.json``): what a delivery manifest needs about the
file (format, dtype, sha256, size) and what a person needs to trust it (input/output types and quantization
parameters, parameters, accuracy, agreement with the float model, latency).
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
from pathlib import Path
from typing import Any

from edge.export.runtime import ArtifactRunner

SCHEMA = "fedge-artifact/1"


def file_facts(path: str | Path) -> dict[str, Any]:
    """File name, size, gzip size (level 9: what zeros from unstructured pruning save in transit) and sha256."""
    data = Path(path).read_bytes()
    return {
        "file": Path(path).name,
        "size-bytes": len(data),
        "gzip-size-bytes": len(gzip.compress(data, compresslevel=9, mtime=0)),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def describe_artifact(
    path: str | Path,
    *,
    runner: ArtifactRunner,
    variant: str,
    precision: str,
    model: str,
    parameters: int,
    nonzero_parameters: int,
    quantization: dict[str, Any],
    compression: dict[str, Any] | None,
    metrics: dict[str, Any],
    source: dict[str, Any],
) -> dict[str, Any]:
    io = runner.io_details()
    return {
        "schema": SCHEMA,
        **file_facts(path),
        "format": runner.format,
        "variant": variant,
        "dtype": precision,
        "model": model,
        "input": io["input"],
        "output": io["output"],
        "parameters": parameters,
        "nonzero-parameters": nonzero_parameters,
        "quantization": quantization,
        "compression": compression,
        "metrics": metrics,
        "source": source,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def write_description(description: dict[str, Any], artifact: str | Path) -> Path:
    out = Path(f"{artifact}.json")
    out.write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")
    return out

"""Where an artifact came from, and what privacy its training spent: the lineage block of an artifact's description
(``NAME.onnx.json``'s ``lineage``), which ``fedge publish`` copies into the signed manifest and every device keeps
with its model and reports in its retained state.

The block (every key kebab-case, every value JSON)::

    run-id, config-sha256 (of the run's config.json), rounds, sites-trained, model-sha256 (of model.pt)
    recipe      variant, dtype, sparsity, calibration (how the int8 ranges were taken)
    acceptance  sha256 of acceptance.json, verdict, worst-site-drop (filled in by ``fedge accept``)
    privacy     epsilon-max, epsilon-median (over the clients that trained), delta, noise-multiplier,
                clipping-norm, sampling-rate, steps (those of the client with the largest ε: the worst case),
                accountant, clients

It reads only JSON and hashes files (no torch), from the run directory through :class:`RunDir`. The privacy
numbers come from ``privacy.json`` as the server's ledger writes it (``server/ledger.py``): a record written before
the ledger kept σ, q and steps gives ``None`` for them, never a guess.
"""

from __future__ import annotations

import hashlib
import statistics
from pathlib import Path
from typing import Any

from shared_models.run_dir import RunDir, RunDirError


def file_sha256(path: str | Path) -> str | None:
    """The sha256 of a file, or ``None`` when it does not exist."""
    path = Path(path)
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def privacy_statement(ledger: dict[str, Any]) -> dict[str, Any]:
    """The privacy statement of a run from its ledger (``privacy.json``): ε max and median over the clients that
    trained, δ, and the worst-case client's noise multiplier, clipping norm, sampling rate and steps."""
    clients = {cid: c for cid, c in dict(ledger.get("clients") or {}).items() if isinstance(c, dict)}
    trained = {cid: c for cid, c in clients.items() if c.get("rounds")} or clients
    epsilons = [float(c["epsilon"]) for c in trained.values() if _number(c.get("epsilon")) is not None]
    worst = max(trained.values(), key=lambda c: _number(c.get("epsilon")) or 0.0, default={})
    return {
        "dp": bool(ledger.get("enabled", True)),
        "epsilon-max": max(epsilons) if epsilons else None,
        "epsilon-median": statistics.median(epsilons) if epsilons else None,
        "target-epsilon": _number(ledger.get("target-epsilon")),
        "delta": _number(worst.get("delta", ledger.get("delta"))),
        "noise-multiplier": _number(worst.get("noise-multiplier")),
        "clipping-norm": _number(worst.get("max-grad-norm")),
        "sampling-rate": _number(worst.get("sample-rate")),
        "steps": _number(worst.get("steps")),
        "accountant": worst.get("accountant") if isinstance(worst.get("accountant"), str) else None,
        "clients": len(trained),
    }


def run_lineage(run_dir: str | Path) -> dict[str, Any]:
    """The run's part of the lineage: ids, hashes, rounds, sites and the privacy statement (what it lacks is
    ``None``)."""
    run = RunDir(Path(run_dir))
    ledger: dict[str, Any] = {}
    rounds = None
    try:
        if run.privacy.is_file():
            ledger = run.read_privacy()
        if run.metrics.is_file():
            rounds = max((int(r.get("round", 0)) for r in run.read_metrics()), default=0)
    except RunDirError:
        pass  # a damaged record: the lineage says what it could read (None for the rest)
    clients = dict(ledger.get("clients") or {})
    return {
        "run-id": run.run_id,
        "config-sha256": file_sha256(run.config),
        "rounds": rounds,
        "sites-trained": sum(1 for c in clients.values() if isinstance(c, dict) and c.get("rounds")),
        "model-sha256": file_sha256(run.model),
        "privacy": privacy_statement(ledger) if ledger else None,
    }


def compression_recipe(description: dict[str, Any]) -> dict[str, Any]:
    """How an artifact was made from the global model: variant, dtype, sparsity, calibration."""
    compression = description.get("compression") if isinstance(description.get("compression"), dict) else {}
    quant = description.get("quantization") if isinstance(description.get("quantization"), dict) else {}
    calibration = None
    if quant.get("calibration"):
        samples = quant.get("calibration-samples")
        source = quant.get("calibration-source")
        calibration = ", ".join(
            str(p) for p in (quant["calibration"], f"{samples} samples" if samples else None, source) if p
        )
    return {
        "variant": description.get("variant"),
        "dtype": description.get("dtype"),
        "format": description.get("format"),
        "sparsity": _number(compression.get("sparsity")),
        "calibration": calibration,
    }


def artifact_lineage(description: dict[str, Any], acceptance: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole lineage block of one artifact: the run's part (``source.lineage``), its recipe, and the
    acceptance report's hash and verdict when there is one."""
    source = description.get("source") if isinstance(description.get("source"), dict) else {}
    run = dict(source.get("lineage") or {})
    block = {**run, "recipe": compression_recipe(description)}
    if acceptance is not None:
        block["acceptance"] = acceptance
    elif isinstance(description.get("lineage"), dict) and "acceptance" in description["lineage"]:
        block["acceptance"] = description["lineage"]["acceptance"]
    return block

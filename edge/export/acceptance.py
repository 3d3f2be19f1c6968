"""The acceptance test of the exact artifact bytes: every site of the federation runs the very files a rollout would
send (their sha256 checked against their descriptions) with the device runtimes, on its own data, and reports the
accuracy of each variant and its change against fp32 on the same site. ``fedge publish`` refuses an artifact whose
worst site lost more than its threshold (:mod:`edge.delivery.acceptance_gate`).

Sites here are simulated, in-process: each site's data is rebuilt from the run record exactly as its client loaded
it (the ``natural`` partitioner's one file per node, or the partition of the pooled set), so it is in the form the
model trained on, and the runtimes run without the device preprocessing (which maps a device's raw rows to that
form); pass ``raw=True`` for sites whose samples are raw device rows. On a federation of real nodes the same test
runs on the nodes themselves (``edge/export/acceptance_app.py``: the files travel in a Flower message, each node's
ClientApp checks their sha256 and measures them on its own table); both paths measure with
:func:`edge.agent.runtime.accuracy_of` and turn the per-site accuracies into the report with :func:`build_report`.

Writes ``acceptance.json`` (the report) and ``acceptance.md`` (its table) into the artifacts folder, and records the
report's sha256 and each artifact's verdict in that artifact's description (``lineage.acceptance``), which the
signed manifest then carries to the devices.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.agent.errors import AgentError
from edge.agent.protocol import format_of
from edge.agent.runtime import accuracy_of, load_runner
from edge.export.artifact import SCHEMA as ARTIFACT_SCHEMA
from edge.export.errors import ExportError
from edge.export.lineage import artifact_lineage, file_sha256

SCHEMA = "fedge-acceptance/1"
REPORT = "acceptance.json"
TABLE = "acceptance.md"
#: the worst-site drop (vs fp32 on the same site) an artifact may have and still be accepted
DEFAULT_MAX_SITE_DROP = 0.05
#: the key of the float model's accuracies (the fp32 artifacts' reference) in the per-site accuracies
GLOBAL_MODEL = "global-model"


class AcceptanceError(ExportError):
    """An acceptance test that cannot run: no artifacts, bytes that are not the described ones, no site data."""


@dataclass(frozen=True)
class Site:
    """One site's labelled samples, as its client loaded them."""

    name: str
    x: np.ndarray
    y: np.ndarray


def artifact_descriptions(artifacts_dir: Path) -> list[dict[str, Any]]:
    """Every artifact ``fedge package`` described in ``artifacts_dir`` (its ``NAME.json`` files), by file name."""
    found = []
    for path in sorted(artifacts_dir.glob("*.json")):
        try:
            side = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(side, dict) and str(side.get("schema", "")) == ARTIFACT_SCHEMA and side.get("file"):
            found.append(side)
    if not found:
        raise AcceptanceError(
            f"{artifacts_dir} holds no artifact described by fedge package (NAME.onnx.json): package the run first "
            "(fedge package RUN_DIR)"
        )
    return found


def runnable(descriptions: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The described artifacts a device runtime runs (``.onnx``, ``.tflite``): those the acceptance test measures."""
    return [d for d in descriptions if format_of(str(d["file"])) is not None]


def exact_bytes(artifacts_dir: Path, description: dict[str, Any]) -> bytes:
    """The artifact's bytes, refused unless their sha256 is the one its description names."""
    path = artifacts_dir / str(description["file"])
    try:
        data = path.read_bytes()
    except OSError as e:
        raise AcceptanceError(f"cannot read {path}: {e}; package the run again") from e
    if hashlib.sha256(data).hexdigest() != description.get("sha256"):
        raise AcceptanceError(
            f"{path} is not the file its description names (sha256 differs): package the run again rather than "
            "editing an artifact"
        )
    return data


def _reference_for(description: dict[str, Any], others: Sequence[dict[str, Any]]) -> str | None:
    """The fp32 artifact an artifact is compared with: fp32 of its own format, else of any format; ``None`` for
    an fp32 artifact itself (it is compared with the global model, when given)."""
    if description.get("dtype") == "fp32":
        return None
    fp32 = [d for d in others if d.get("dtype") == "fp32" and d.get("variant") == "fp32"]
    same = [d for d in fp32 if d.get("format") == description.get("format")]
    return str((same or fp32)[0]["file"]) if (same or fp32) else None


def accept_artifacts(
    artifacts_dir: str | Path,
    sites: Sequence[Site],
    *,
    max_site_drop: float = DEFAULT_MAX_SITE_DROP,
    global_model: Callable[[np.ndarray], np.ndarray] | None = None,
    raw: bool = False,
    run_id: str | None = None,
    progress: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Run every described artifact in ``artifacts_dir`` on every site with the device runtime; write
    ``acceptance.json`` and ``acceptance.md`` and each description's ``lineage.acceptance``; return the report.

    ``global_model`` (one sample -> scores) is the float model the artifacts came from: it gives every site's
    reference for the fp32 artifacts and for variants without an fp32 twin. ``raw``: the sites' samples are raw
    device rows, so the declared device preprocessing is applied (as the agent does)."""
    artifacts_dir = Path(artifacts_dir)
    if not sites or any(len(s.y) == 0 for s in sites):
        raise AcceptanceError("every site needs labelled samples to accept an artifact on")
    check_max_site_drop(max_site_drop)
    descriptions = artifact_descriptions(artifacts_dir)
    accuracy: dict[str, dict[str, float]] = {}
    if global_model is not None:
        progress("global model on every site")
        accuracy[GLOBAL_MODEL] = {s.name: accuracy_of(global_model, s.x, s.y) for s in sites}
    for d in runnable(descriptions):
        data = exact_bytes(artifacts_dir, d)
        source = d.get("source") if isinstance(d.get("source"), dict) else {}
        steps = source.get("device-preprocessing") if raw else None
        try:
            runner = load_runner(str(format_of(str(d["file"]))), data, steps)
        except AgentError as e:
            raise AcceptanceError(f"{d['file']} does not load in the device runtime: {e}") from e
        progress(f"{d['file']} on {len(sites)} sites")
        accuracy[str(d["file"])] = {s.name: accuracy_of(runner.predict, s.x, s.y) for s in sites}
    report = build_report(
        descriptions,
        accuracy,
        [{"name": s.name, "samples": len(s.y)} for s in sites],
        max_site_drop=max_site_drop,
        run_id=run_id,
        mode="simulated: each site's own data in-process, the exact files in the device runtimes"
        + (", with the device preprocessing (raw rows)" if raw else " (samples as the site's loader gives them)"),
    )
    write_report(artifacts_dir, report, descriptions)
    return report


@dataclass(frozen=True)
class SiteResult:
    """What one site measured itself (a federation's node): its accuracy for each artifact file and for
    :data:`GLOBAL_MODEL`, on its ``samples`` samples."""

    name: str
    samples: int
    accuracy: Mapping[str, float]


def accept_reported(
    artifacts_dir: str | Path,
    results: Sequence[SiteResult],
    *,
    failed_sites: Sequence[Mapping[str, str]] = (),
    min_sites: int,
    max_site_drop: float = DEFAULT_MAX_SITE_DROP,
    run_id: str | None = None,
    mode: str,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The acceptance report from accuracies the sites measured themselves, written as :func:`accept_artifacts`
    writes it (the same rows and verdicts). The files are checked against their descriptions once more, so the
    report's sha256 are those of the files beside it. A site that did not report every artifact is listed among
    the failed sites, never a row; with fewer sites than ``min_sites`` every artifact is refused (``incomplete``)."""
    artifacts_dir = Path(artifacts_dir)
    check_max_site_drop(max_site_drop)
    descriptions = artifact_descriptions(artifacts_dir)
    files = [str(d["file"]) for d in runnable(descriptions)]
    for d in runnable(descriptions):
        exact_bytes(artifacts_dir, d)
    failed = [dict(f) for f in failed_sites]
    kept: list[SiteResult] = []
    for r in results:
        missing = [f for f in [*files, GLOBAL_MODEL] if f not in r.accuracy]
        if missing:
            failed.append({"site": r.name, "reason": f"reported no accuracy for {', '.join(missing)}"})
        elif r.samples < 1:
            failed.append({"site": r.name, "reason": "has no labelled samples to measure on"})
        elif any(k.name == r.name for k in kept):
            failed.append({"site": r.name, "reason": "another node already reported as this site"})
        else:
            kept.append(r)
    accuracy = {key: {r.name: float(r.accuracy[key]) for r in kept} for key in [*files, GLOBAL_MODEL]}
    report = build_report(
        descriptions,
        accuracy,
        [{"name": r.name, "samples": r.samples} for r in kept],
        max_site_drop=max_site_drop,
        run_id=run_id,
        mode=mode,
        failed_sites=failed,
        min_sites=min_sites,
        extra=extra,
    )
    write_report(artifacts_dir, report, descriptions)
    return report


def check_max_site_drop(max_site_drop: float) -> None:
    if not 0 <= max_site_drop <= 1:
        raise AcceptanceError(f"max_site_drop must be within 0..1, got {max_site_drop}")


def build_report(
    descriptions: Sequence[dict[str, Any]],
    accuracy: Mapping[str, Mapping[str, float]],
    sites: Sequence[Mapping[str, Any]],
    *,
    max_site_drop: float,
    run_id: str | None,
    mode: str,
    failed_sites: Sequence[Mapping[str, str]] = (),
    min_sites: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The acceptance report from per-site accuracies, wherever they were measured (in-process or on the nodes).

    ``accuracy``: artifact file (and :data:`GLOBAL_MODEL`) -> site name -> accuracy; ``sites``: each site's
    ``name`` and ``samples``. ``failed_sites``: sites (or nodes) that could not run the test, each with its
    ``reason``; they are listed, never rows. With fewer sites than ``min_sites``, every artifact is refused with
    that reason (``refused-because``), which the publish gate honours whatever its threshold: an artifact not
    tested where it must be is not accepted."""
    names = [str(s["name"]) for s in sites]
    incomplete = None
    if min_sites is not None and len(names) < min_sites:
        incomplete = (
            f"only {len(names)} of the {min_sites} sites the acceptance needs ran it"
            + (f" ({', '.join(names)})" if names else "")
            + ("; failed: " + "; ".join(f"{f['site']}: {f['reason']}" for f in failed_sites) if failed_sites else "")
        )
    rows = []
    for d in descriptions:
        name = str(d["file"])
        if name not in accuracy:
            continue
        reference = _reference_for(d, descriptions) or (GLOBAL_MODEL if GLOBAL_MODEL in accuracy else None)
        per_site = {}
        for site in names:
            acc = accuracy[name][site]
            ref = accuracy[reference][site] if reference else None
            per_site[site] = {"accuracy": acc, "reference-accuracy": ref, "drop": None if ref is None else ref - acc}
        drops = {site: v["drop"] for site, v in per_site.items() if v["drop"] is not None}
        worst = max(drops, key=lambda site: drops[site]) if drops else None
        worst_drop = drops[worst] if worst else 0.0
        row = {
            "file": name,
            "sha256": d["sha256"],
            "format": d.get("format"),
            "variant": d.get("variant"),
            "dtype": d.get("dtype"),
            "reference": reference,
            "sites": per_site,
            "worst-site": worst,
            "worst-site-drop": worst_drop,
            "verdict": "accepted" if worst_drop <= max_site_drop + 1e-12 and incomplete is None else "refused",
        }
        if incomplete is not None:
            row["refused-because"] = incomplete
        rows.append(row)
    return {
        "schema": SCHEMA,
        "run-id": run_id,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "mode": mode,
        **(dict(extra) if extra else {}),
        "max-site-drop": max_site_drop,
        "sites": [{"name": str(s["name"]), "samples": int(s["samples"])} for s in sites],
        **({"failed-sites": [dict(f) for f in failed_sites]} if failed_sites else {}),
        **({"min-sites": min_sites} if min_sites is not None else {}),
        **({"incomplete": incomplete} if incomplete is not None else {}),
        "reference-accuracy": accuracy.get(GLOBAL_MODEL),
        "artifacts": rows,
    }


def write_report(artifacts_dir: Path, report: dict[str, Any], descriptions: Sequence[dict[str, Any]]) -> Path:
    """Write acceptance.json and acceptance.md, then each accepted-or-refused artifact's ``lineage.acceptance``."""
    path = artifacts_dir / REPORT
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (artifacts_dir / TABLE).write_text(markdown_table(report), encoding="utf-8")
    digest = file_sha256(path)
    by_file = {r["file"]: r for r in report["artifacts"]}
    for d in descriptions:
        row = by_file.get(str(d["file"]))
        if row is None:
            continue
        d["lineage"] = artifact_lineage(
            d,
            acceptance={
                "sha256": digest,
                "verdict": row["verdict"],
                "worst-site": row["worst-site"],
                "worst-site-drop": row["worst-site-drop"],
                "max-site-drop": report["max-site-drop"],
                # what the field is held to (edge/delivery/feedback.py): the worst and the mean site's accuracy
                "accuracy-min": min((v["accuracy"] for v in row["sites"].values()), default=None),
                "accuracy-mean": (
                    sum(v["accuracy"] for v in row["sites"].values()) / len(row["sites"]) if row["sites"] else None
                ),
                "sites": len(report["sites"]),
            },
        )
        (artifacts_dir / f"{d['file']}.json").write_text(json.dumps(d, indent=2) + "\n", encoding="utf-8")
    return path


def markdown_table(report: dict[str, Any]) -> str:
    sites = [s["name"] for s in report["sites"]]
    lines = [
        f"# Acceptance of the exact artifact bytes (run {report.get('run-id') or '?'})",
        "",
        f"{report['mode']}; an artifact is refused when a site loses more than {report['max-site-drop']:.3f} "
        "accuracy against its reference (fp32 of the same format; fp32 against the global model).",
        "",
        "| artifact | " + " | ".join(sites) + " | worst site | drop | verdict |",
        "|---|" + "---:|" * len(sites) + "---|---:|---|",
    ]
    if report.get("reference-accuracy"):
        ref = report["reference-accuracy"]
        lines.append("| global model | " + " | ".join(f"{ref[s]:.3f}" for s in sites) + " | | | |")
    for row in report["artifacts"]:
        cells = []
        for s in sites:
            v = row["sites"][s]
            change = "" if v["drop"] is None else f" ({-v['drop']:+.3f})"
            cells.append(f"{v['accuracy']:.3f}{change}")
        lines.append(
            f"| {row['file']} | "
            + " | ".join(cells)
            + f" | {row['worst-site'] or ''} | {row['worst-site-drop']:.3f} | {row['verdict']} |"
        )
    if report.get("failed-sites"):
        lines += ["", "Sites that could not run the test (not rows of the table):", ""]
        lines += [f"- {f['site']}: {f['reason']}" for f in report["failed-sites"]]
    if report.get("incomplete"):
        lines += ["", f"Every artifact is refused: {report['incomplete']}."]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ from a run


def run_sites(run_dir: str | Path, *, sites: int | None = None, max_samples: int = 1000, seed: int = 0) -> list[Site]:
    """Every site's data of a run, rebuilt from its record as each client loaded it: with the ``natural``
    partitioner one file per node (``node-data-paths``), else the pooled set's partitions, as many as clients
    trained (the privacy ledger), or ``sites``. At most ``max_samples`` per site (a seeded subset)."""
    from edge.export.run_source import load_run_model, run_federated_data
    from shared_models.run_dir import RunDir

    _, info, config = load_run_model(run_dir)
    fed = run_federated_data(info, config)
    if fed.partitioner == "natural":
        paths = [p.strip() for p in str(config.get("node-data-paths", "")).split(",") if p.strip()]
        if not paths:
            raise AcceptanceError(
                "this run's nodes brought their own files (natural partitioner) and its record names none "
                "(node-data-paths): run the acceptance on the federation's nodes "
                "(fedge accept RUN_DIR --superlink HOST:PORT)"
            )
        loaded = [(Path(p).name, fed.client_train_set(i, len(paths), node_data_path=p)) for i, p in enumerate(paths)]
    else:
        run = RunDir(Path(run_dir))
        count = sites or len((run.read_privacy() if run.privacy.is_file() else {}).get("clients") or {})
        if count < 1:
            raise AcceptanceError("cannot tell how many sites this run had: pass --sites N")
        loaded = [(f"site-{i}", fed.client_train_set(i, count)) for i in range(count)]
    out = []
    for name, data in loaded:
        kept = data.sample(max_samples, seed=seed)  # as a real node takes its subset (client/client_app.py)
        out.append(Site(name, np.asarray(kept.x), np.asarray(kept.y)))
    return out


def accept_run(
    run_dir: str | Path,
    *,
    artifacts_dir: str | Path | None = None,
    max_site_drop: float = DEFAULT_MAX_SITE_DROP,
    sites: int | None = None,
    max_samples: int = 1000,
    progress: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """``fedge accept RUN_DIR``: the run's artifacts (``RUN_DIR/artifacts`` unless given) on every site of the run,
    with the global model as the reference of fp32."""
    import torch

    from edge.export.run_source import load_run_model
    from shared_models.run_dir import RunDir

    run = RunDir(Path(run_dir))
    model, _, _ = load_run_model(run_dir)
    site_data = run_sites(run_dir, sites=sites, max_samples=max_samples)

    def global_model(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.as_tensor(np.asarray(x, dtype=np.float32)[None, ...])).numpy().reshape(-1)

    return accept_artifacts(
        artifacts_dir or run.artifacts,
        site_data,
        max_site_drop=max_site_drop,
        global_model=global_model,
        run_id=run.run_id,
        progress=progress,
    )

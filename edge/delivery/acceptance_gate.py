"""The acceptance gate of ``fedge publish``: an artifact goes out only if the federation's sites accepted its exact
bytes (``fedge accept`` wrote ``acceptance.json`` beside it) and its worst site lost at most ``max_site_drop``
accuracy against its reference on that site (the report's ``reference``: the fp32 artifact, or for an fp32 artifact
the global model it was exported from). ``override`` (``--accept-site-drop``) lets a refused or untested artifact out,
and the rollout report records why.

Reads JSON and hashes only (the acceptance report's own format is :mod:`edge.export.acceptance`'s, by key names).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from edge.delivery.errors import DeliveryError
from edge.delivery.publisher import Artifact

REPORT = "acceptance.json"
DEFAULT_MAX_SITE_DROP = 0.05


class AcceptanceGateError(DeliveryError):
    """An artifact the acceptance gate refuses: untested, changed since it was tested, or worse on a site."""


@dataclass(frozen=True, kw_only=True)
class AcceptanceGate:
    #: the worst-site accuracy drop (vs the artifact's reference on the same site) an artifact may have
    max_site_drop: float = DEFAULT_MAX_SITE_DROP
    #: roll out anyway (recorded in the rollout report)
    override: bool = False


def _report(artifact: Artifact) -> tuple[dict[str, Any] | None, bytes]:
    path = artifact.path.parent / REPORT
    try:
        raw = path.read_bytes()
        report = json.loads(raw)
    except FileNotFoundError:
        return None, b""
    except (OSError, ValueError) as e:
        raise AcceptanceGateError(f"cannot read {path}: {e}; run fedge accept RUN_DIR again") from e
    return (report if isinstance(report, dict) else None), raw


def acceptance_problem(artifact: Artifact, max_site_drop: float) -> str | None:
    """Why ``artifact`` may not go out (``None`` when its acceptance report lets it)."""
    name = artifact.path.name
    report, raw = _report(artifact)
    if report is None:
        return (
            f"{name} has no acceptance report ({artifact.path.parent / REPORT}): test its exact bytes on the "
            "federation's sites first with fedge accept RUN_DIR"
        )
    sha = hashlib.sha256(artifact.data).hexdigest()
    row = next((r for r in report.get("artifacts") or [] if isinstance(r, dict) and r.get("file") == name), None)
    if row is None or row.get("sha256") != sha:
        return f"{name} is not the file its acceptance report tested (changed since): run fedge accept RUN_DIR again"
    signed = (artifact.lineage.get("acceptance") or {}).get("sha256")
    if signed is not None and signed != hashlib.sha256(raw).hexdigest():
        return f"{REPORT} changed after {name}'s description recorded it: run fedge accept RUN_DIR again"
    if row.get("refused-because"):  # not tested on every site it had to be: no threshold lets it out
        return f"{name} was not accepted: {row['refused-because']}; run fedge accept RUN_DIR again"
    drop = row.get("worst-site-drop")
    if not isinstance(drop, int | float):
        return f"{name}'s acceptance report has no worst-site drop: run fedge accept RUN_DIR again"
    if drop > max_site_drop + 1e-12:
        return (
            f"{name} loses {drop:.3f} accuracy on site {row.get('worst-site')} against {_reference_name(row)} "
            f"there, more than --max-site-drop {max_site_drop:.3f}"
        )
    return None


def _reference_name(row: dict[str, Any]) -> str:
    """What the acceptance report compared an artifact with (its ``reference``), in words."""
    reference = row.get("reference")
    if reference == "global-model":
        return "the global model"
    return str(reference) if reference else "its reference"


def check_acceptance(artifacts: list[Artifact], gate: AcceptanceGate) -> list[str]:
    """Refuse (:class:`AcceptanceGateError`) unless every artifact passes the gate; with ``gate.override``, return
    the overrides to record instead (one line per artifact that did not pass)."""
    problems = [p for a in artifacts if (p := acceptance_problem(a, gate.max_site_drop)) is not None]
    if problems and not gate.override:
        raise AcceptanceGateError(
            "; ".join(problems) + ". Nothing was published; to roll out anyway, pass --accept-site-drop (recorded "
            "in the rollout report)"
        )
    return [f"accept-site-drop: {p}" for p in problems]

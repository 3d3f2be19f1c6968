"""``fedge accept RUN_DIR --superlink HOST:PORT``: the acceptance test of the exact artifact bytes on a federation's
real nodes, submitted like a training run.

The run config is the training run's own (so every node loads its data exactly as it trained: same data set,
columns, classes) plus the ``acceptance-*`` keys below, which only fedge sets; the nodes' settings ignore them. The
Flower App names :data:`ACCEPTANCE_APP` as its ServerApp (``edge/export/acceptance_app.py``), which sends each node the
files and collects their accuracies, and writes the report into the artifacts folder on the server. Paths are
server-side paths, as ``fedge run --resume RUN_DIR`` passes them: the run directory is read here too (its config),
so this machine and the server must see it at the same path, as for a resumed run.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.export.acceptance import AcceptanceError
from server.deployment import Connection, DeploymentError, run_on_federation
from shared_models.run_config import DEFAULT_RUN_CONFIG
from shared_models.run_dir import RunDir

ACCEPTANCE_APP = "edge.export.acceptance_app:app"
#: the acceptance ServerApp's last line: its counts and where it wrote the report (a path on the server)
ACCEPTANCE_LINE = re.compile(r"acceptance report in (\S.*?)\s*$")
COUNTS = re.compile(r"(\d+) accepted, (\d+) refused")
DEFAULT_TIMEOUT = 300.0


@dataclass(frozen=True, kw_only=True)
class AcceptanceSettings:
    """The acceptance keys of the run config, parsed once at the ServerApp's boundary.

    ``min_sites`` 0: every site that trained (the clients in the run's privacy ledger) must report."""

    run_dir: Path
    artifacts_dir: Path
    max_site_drop: float = 0.05
    max_samples: int = 1000
    min_sites: int = 0
    timeout: float = DEFAULT_TIMEOUT
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.max_site_drop <= 1:
            raise AcceptanceError(f"acceptance-max-site-drop must be within 0..1, got {self.max_site_drop}")
        if self.max_samples < 1 or self.min_sites < 0 or self.timeout <= 0:
            raise AcceptanceError(
                f"acceptance-max-samples must be >= 1 (got {self.max_samples}), acceptance-min-sites >= 0 (got "
                f"{self.min_sites}) and acceptance-timeout > 0 (got {self.timeout})"
            )

    def run_config(self) -> dict[str, Any]:
        return {
            "acceptance-run-dir": str(self.run_dir),
            "acceptance-artifacts": str(self.artifacts_dir),
            "acceptance-max-site-drop": float(self.max_site_drop),
            "acceptance-max-samples": int(self.max_samples),
            "acceptance-min-sites": int(self.min_sites),
            "acceptance-timeout": float(self.timeout),
            "acceptance-seed": int(self.seed),
        }

    @classmethod
    def from_run_config(cls, run: Mapping[str, Any]) -> AcceptanceSettings:
        missing = [k for k in ("acceptance-run-dir", "acceptance-artifacts") if not str(run.get(k, "")).strip()]
        if missing:
            raise AcceptanceError(
                f"the acceptance ServerApp needs {' and '.join(missing)} in its run config: submit it with "
                "fedge accept RUN_DIR --superlink HOST:PORT, which sets them"
            )
        try:
            return cls(
                run_dir=Path(str(run["acceptance-run-dir"])).expanduser().resolve(),
                artifacts_dir=Path(str(run["acceptance-artifacts"])).expanduser().resolve(),
                max_site_drop=float(run.get("acceptance-max-site-drop", 0.05)),
                max_samples=int(run.get("acceptance-max-samples", 1000)),
                min_sites=int(run.get("acceptance-min-sites", 0)),
                timeout=float(run.get("acceptance-timeout", DEFAULT_TIMEOUT)),
                seed=int(run.get("acceptance-seed", 0)),
            )
        except (TypeError, ValueError) as e:
            raise AcceptanceError(f"an acceptance-* setting is not a number: {e}") from e


def acceptance_run_config(settings: AcceptanceSettings) -> dict[str, Any]:
    """The training run's saved config (keys this version knows), not resumed, plus the acceptance keys."""
    run = RunDir(settings.run_dir)
    if not run.config.is_file() or not run.model.is_file():
        raise AcceptanceError(
            f"{run.path} is not a finished run directory (config.json and model.pt): give fedge accept the "
            "runs/<run-id>/ the training wrote, as the server sees it"
        )
    saved = {k: v for k, v in run.read_config().items() if k in DEFAULT_RUN_CONFIG}
    return {**DEFAULT_RUN_CONFIG, **saved, "resume-from": "", "progress": False, **settings.run_config()}


@dataclass(frozen=True)
class FederatedAcceptance:
    """How ``fedge accept --superlink`` ended: the Flower run, the report's path on the server, the report itself
    when this machine can read that path, else the counts the ServerApp's last line gave."""

    flower_run_id: int
    report_path: str
    report: dict[str, Any] | None
    accepted: int
    refused: int


def accept_on_federation(
    settings: AcceptanceSettings, connection: Connection, *, echo: Callable[[str], None] = sys.stdout.write
) -> FederatedAcceptance:
    """Submit the acceptance test to the federation's SuperLink and follow it until it ends (its log to ``echo``).

    Raises :class:`server.deployment.RunFailedError` with the server's reason when it does not complete (no
    artifacts, a file that is not the described one, fewer sites than ``min_sites`` reporting)."""
    import json

    lines: list[str] = []

    def on_line(line: str) -> None:
        lines.append(line)
        echo(line)

    outcome = run_on_federation(
        acceptance_run_config(settings),
        connection,
        echo=on_line,
        server_app=ACCEPTANCE_APP,
        result_line=ACCEPTANCE_LINE,
    )
    path = outcome.run_record
    if path is None:
        raise DeploymentError(
            f"the acceptance run {outcome.flower_run_id} completed without saying where it wrote its report; see "
            f"its log (flwr log {outcome.flower_run_id}) and the artifacts folder {settings.artifacts_dir}"
        )
    report = None
    if Path(path).is_file():
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    if report is not None:
        refused = sum(row["verdict"] != "accepted" for row in report["artifacts"])
        accepted = len(report["artifacts"]) - refused
    else:
        counts = [m for m in map(COUNTS.search, lines) if m]
        accepted, refused = (int(counts[-1].group(1)), int(counts[-1].group(2))) if counts else (0, 0)
    return FederatedAcceptance(
        flower_run_id=outcome.flower_run_id, report_path=path, report=report, accepted=accepted, refused=refused
    )

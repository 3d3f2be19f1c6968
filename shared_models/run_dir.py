"""The run directory ``runs/<run-id>/``: the one module that knows its layout, and the one atomic write.

Layout::

    runs/<run-id>/
      config.json          the full run config
      metrics.json         one entry per round (round 0 = the initial model), rewritten after every round; per
                           site (federated evaluation): accuracy, loss, examples, the worst site, the spread;
                           ``stopped`` where the run ended early (round, reason)
      privacy.json         the privacy ledger (per client: ε, δ, σ, q, steps, clipping norm, accountant and its
                           history, rounds taken, refused, discarded; server/ledger.py lists the keys)
      model.json           what the checkpoints hold (model name, input shape, classes, data set)
      model.pt             the final global model (a torch state_dict): the run finished
      checkpoints/round-NNN.pt
      resume.pt            what the server needs to go on after the last finished round (server/resume.py)
      accuracy.png, epsilon.png, sites.png (accuracy per site per round)
      artifacts/           what ``fedge package`` exports (ONNX, TFLite, report) and ``fedge accept`` checks
      logs/native.log      native libraries' log lines while packaging and accepting (LiteRT, XLA)
      edge/                the demo's delivery side: keys/, devices/, logs/,
        fleet.db             the fleet collector's store (SQLite)
        rollouts.json        every rollout's report, rewritten after each
        fleet.json           the fleet table and telemetry counts at the end
        demo.json            the demo's summary

The server writes it (``server/run_record.py``, ``server/resume.py``); ``fedge package``, the demo and ``fedge run
--resume`` read it. Reading paths and JSON needs no torch, so a process without it can inspect a run.

>>> run = RunDir.of("runs", "digits-dp-20250101-120000-abc123")
>>> run.run_id, run.model.name, run.checkpoint(3).name
('digits-dp-20250101-120000-abc123', 'model.pt', 'round-003.pt')
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from shared_models.errors import SharedModelsError


class RunDirError(SharedModelsError):
    """A run directory, or one of its files, that is missing or cannot be read."""


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` whole or not at all: ``write`` fills a temporary file in the same directory, which is
    flushed, fsynced and renamed over ``path``. If ``write`` raises, the old file (if any) is left as it was and the
    temporary file is removed, so a crash never leaves half a file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, payload: Any, *, default: Callable[[Any], Any] | None = None) -> Path:
    """Write ``payload`` as indented JSON through :func:`atomic_write`."""
    text = json.dumps(payload, indent=2, default=default) + "\n"  # serialise first: a bad value writes nothing
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def read_json(path: str | Path) -> Any:
    """A JSON file's contents; a missing or damaged file is a :class:`RunDirError` that names it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise RunDirError(f"cannot read {path}: {e}") from e


@dataclass(frozen=True)
class RunDir:
    """The paths of one run directory and readers for its JSON records."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @classmethod
    def of(cls, runs_dir: str | Path, run_id: str) -> RunDir:
        """The directory of run ``run_id`` under ``runs_dir``."""
        return cls(Path(runs_dir) / run_id)

    @property
    def run_id(self) -> str:
        return self.path.resolve().name

    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def model_info(self) -> Path:
        return self.path / "model.json"

    @property
    def model(self) -> Path:
        return self.path / "model.pt"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def privacy(self) -> Path:
        return self.path / "privacy.json"

    @property
    def resume(self) -> Path:
        return self.path / "resume.pt"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def checkpoint(self, server_round: int) -> Path:
        return self.checkpoints / f"round-{server_round:03d}.pt"

    @property
    def accuracy_plot(self) -> Path:
        return self.path / "accuracy.png"

    @property
    def epsilon_plot(self) -> Path:
        return self.path / "epsilon.png"

    @property
    def site_accuracy_plot(self) -> Path:
        return self.path / "sites.png"

    @property
    def artifacts(self) -> Path:
        return self.path / "artifacts"

    @property
    def edge(self) -> Path:
        return self.path / "edge"

    @property
    def logs(self) -> Path:
        """What native libraries printed while the run was packaged and accepted (``native.log``)."""
        return self.path / "logs"

    @property
    def fleet_db(self) -> Path:
        return self.edge / "fleet.db"

    @property
    def rollouts(self) -> Path:
        return self.edge / "rollouts.json"

    @property
    def fleet_summary(self) -> Path:
        return self.edge / "fleet.json"

    @property
    def demo_summary(self) -> Path:
        return self.edge / "demo.json"

    def exists(self) -> bool:
        return self.path.is_dir()

    def is_finished(self) -> bool:
        """The run wrote its final model (and what it is): it can be packaged."""
        return self.model.is_file() and self.model_info.is_file()

    def can_resume(self) -> bool:
        """At least one round finished and saved the server's state."""
        return self.resume.is_file()

    def missing(self, *files: Path) -> list[str]:
        """The names of those of ``files`` that do not exist."""
        return [f.name for f in files if not f.is_file()]

    def read_config(self) -> dict[str, Any]:
        return read_json(self.config)

    def read_model_info(self) -> dict[str, Any]:
        return read_json(self.model_info)

    def read_metrics(self) -> list[dict[str, Any]]:
        """The per-round entries of metrics.json (round 0 = the initial model)."""
        payload = read_json(self.metrics)
        if not isinstance(payload, dict) or not isinstance(payload.get("rounds"), list):
            raise RunDirError(f"{self.metrics} has no list of rounds; is it a fedge run record?")
        return payload["rounds"]

    def read_privacy(self) -> dict[str, Any]:
        return read_json(self.privacy)

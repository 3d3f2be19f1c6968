"""The run directory ``runs/<run-id>/``: config, per-round metrics, privacy ledger, checkpoints and plots.

Layout::

    runs/<run-id>/
      config.json          the full run config
      metrics.json         one entry per round (round 0 = the initial model), rewritten after every round
      privacy.json         the privacy ledger (per client: ε, rounds taken, rounds refused)
      model.json           what the checkpoints hold (model name, input shape, classes, data set)
      model.pt             the final global model (a torch state_dict)
      checkpoints/round-NNN.pt
      resume.pt            what the server needs to go on after the last finished round (server/resume.py)
      accuracy.png, epsilon.png

A resumed run (``rounds`` given) goes on in the same directory: its earlier rounds are kept and config.json, the
run's own settings, is left as it was.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from server.ledger import PrivacyLedger


def _write_json(path: Path, payload: Any) -> None:
    """Write through a temporary file and rename, so a crash never leaves half a JSON file behind."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _finite(value: float) -> float | None:
    return value if isinstance(value, int | float) and math.isfinite(value) else None


class RunRecord:
    def __init__(
        self,
        directory: Path,
        *,
        config: dict[str, Any],
        model_info: dict[str, Any],
        rounds: list[dict[str, Any]] | None = None,
    ) -> None:
        self.dir = directory
        (self.dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        self.rounds: list[dict[str, Any]] = list(rounds or [])
        if rounds is None or not (self.dir / "config.json").is_file():
            _write_json(self.dir / "config.json", config)
        _write_json(self.dir / "model.json", model_info)

    def save_checkpoint(self, server_round: int, state_dict: dict[str, torch.Tensor]) -> Path:
        path = self.dir / "checkpoints" / f"round-{server_round:03d}.pt"
        torch.save(state_dict, path)
        return path

    def save_final(self, state_dict: dict[str, torch.Tensor]) -> Path:
        path = self.dir / "model.pt"
        torch.save(state_dict, path)
        return path

    def add_round(self, entry: dict[str, Any], ledger: PrivacyLedger) -> None:
        self.rounds.append({k: (_finite(v) if isinstance(v, float) else v) for k, v in entry.items()})
        _write_json(self.dir / "metrics.json", {"rounds": self.rounds})
        _write_json(self.dir / "privacy.json", ledger.state_dict())

    def plot(self, ledger: PrivacyLedger) -> list[Path]:
        """accuracy.png (central accuracy per round) and, with DP, epsilon.png (ε per round against the target)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator

        written = []
        rounds = [r["round"] for r in self.rounds if r.get("central-accuracy") is not None]
        if rounds:
            fig, ax = plt.subplots(figsize=(6, 4))
            ax.plot(rounds, [r["central-accuracy"] for r in self.rounds if r.get("central-accuracy") is not None], "o-")
            ax.set_xlabel("round")
            ax.set_ylabel("accuracy (server's held-out split)")
            ax.set_ylim(0, 1)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.set_title("Global model accuracy per round")
            fig.tight_layout()
            fig.savefig(self.dir / "accuracy.png", dpi=100)
            plt.close(fig)
            written.append(self.dir / "accuracy.png")
        eps_rounds = [r for r in self.rounds if r.get("epsilon-max") is not None and r["round"] > 0]
        if ledger.enabled and eps_rounds:
            fig, ax = plt.subplots(figsize=(6, 4))
            xs = [r["round"] for r in eps_rounds]
            ax.plot(xs, [r["epsilon-max"] for r in eps_rounds], "o-", label="max over clients")
            ax.plot(xs, [r["epsilon-mean"] for r in eps_rounds], "s--", label="mean over clients")
            ax.axhline(ledger.target_epsilon, color="red", linestyle=":", label=f"budget ε={ledger.target_epsilon:g}")
            ax.set_xlabel("round")
            ax.set_ylabel(f"cumulative ε (δ={ledger.delta:g})")
            ax.set_ylim(0, max(ledger.target_epsilon, max(r["epsilon-max"] for r in eps_rounds)) * 1.1)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.legend()
            ax.set_title("Privacy spent over the run")
            fig.tight_layout()
            fig.savefig(self.dir / "epsilon.png", dpi=100)
            plt.close(fig)
            written.append(self.dir / "epsilon.png")
        return written

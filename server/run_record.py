"""The server's writer of the run directory ``runs/<run-id>/``: config, per-round metrics, privacy ledger,
checkpoints and plots. The layout is :class:`shared_models.run_dir.RunDir`'s; every JSON record is written whole
or not at all (:func:`shared_models.run_dir.write_json`).

A resumed run (``rounds`` given) goes on in the same directory: its earlier rounds are kept and config.json, the
run's own settings, is left as it was.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from server.ledger import PrivacyLedger
from shared_models.run_dir import RunDir, atomic_write, write_json


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
        self.run = RunDir(directory)
        self.dir = self.run.path
        self.run.checkpoints.mkdir(parents=True, exist_ok=True)
        self.rounds: list[dict[str, Any]] = list(rounds or [])
        self.stopped: dict[str, Any] | None = None
        if rounds is None or not self.run.config.is_file():
            write_json(self.run.config, config, default=_jsonable)
        write_json(self.run.model_info, model_info, default=_jsonable)

    def save_checkpoint(self, server_round: int, state_dict: dict[str, torch.Tensor]) -> Path:
        return atomic_write(self.run.checkpoint(server_round), lambda fh: torch.save(state_dict, fh))

    def save_final(self, state_dict: dict[str, torch.Tensor]) -> Path:
        """model.pt, written last and whole: its presence means the run finished (``RunDir.is_finished``)."""
        return atomic_write(self.run.model, lambda fh: torch.save(state_dict, fh))

    def add_round(
        self, entry: dict[str, Any], ledger: PrivacyLedger, *, before_write: Callable[[], None] | None = None
    ) -> None:
        """Append a finished round and rewrite metrics.json and privacy.json. ``before_write`` runs in between (the
        server saves resume.pt there), so a round that shows in metrics.json can always be resumed after."""
        self.rounds.append({k: (_finite(v) if isinstance(v, float) else v) for k, v in entry.items()})
        if before_write is not None:
            before_write()
        self._write(ledger)

    def stop(self, stopped: dict[str, Any], ledger: PrivacyLedger) -> None:
        """Record why the run ended before its last round (``round``: the round not started, ``reason``)."""
        self.stopped = dict(stopped)
        self._write(ledger)

    def _write(self, ledger: PrivacyLedger) -> None:
        extra = {"stopped": self.stopped} if self.stopped is not None else {}
        write_json(self.run.metrics, {"rounds": self.rounds, **extra}, default=_jsonable)
        write_json(self.run.privacy, {**ledger.state_dict(), **extra}, default=_jsonable)

    def plot(self, ledger: PrivacyLedger, *, site_accuracy_threshold: float | None = None) -> list[Path]:
        """accuracy.png (central accuracy per round), with DP epsilon.png (ε per round against the target), and
        with federated evaluation sites.png (each site's accuracy per round, the threshold, the worst site)."""
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
            fig.savefig(self.run.accuracy_plot, dpi=100)
            plt.close(fig)
            written.append(self.run.accuracy_plot)
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
            fig.savefig(self.run.epsilon_plot, dpi=100)
            plt.close(fig)
            written.append(self.run.epsilon_plot)
        site_rounds = [r for r in self.rounds if r.get("sites")]
        if site_rounds:
            fig, ax = plt.subplots(figsize=(7, 4))
            names = sorted({name for r in site_rounds for name in r["sites"]})
            xs = [r["round"] for r in site_rounds]
            for name in names:
                ys = [r["sites"].get(name, {}).get("accuracy", float("nan")) for r in site_rounds]
                ax.plot(xs, ys, "o-", label=name)
            if site_accuracy_threshold:
                ax.axhline(
                    site_accuracy_threshold, color="red", linestyle=":", label=f"threshold {site_accuracy_threshold:g}"
                )
            last = site_rounds[-1]
            ax.set_xlabel("round")
            ax.set_ylabel("accuracy on the site's own data")
            ax.set_ylim(0, 1)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
            ax.set_title(
                f"Per-site accuracy (last: worst {last['worst-site']} {last['worst-site-accuracy']:.2f}, "
                f"spread {last['site-accuracy-spread']:.2f})",
                fontsize="medium",
            )
            fig.tight_layout()
            fig.savefig(self.run.site_accuracy_plot, dpi=100)
            plt.close(fig)
            written.append(self.run.site_accuracy_plot)
        return written

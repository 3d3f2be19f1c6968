"""Strategy choice by name: Flower's own strategies, configured from the run config, never rewritten."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from flwr.serverapp.strategy import FedAdam, FedAvg, FedMedian, FedProx, FedTrimmedAvg, FedYogi, Krum, Strategy

from server.errors import ServerConfigError

# Strategies whose aggregation is a weighted mean of the replies (FedAdam/FedYogi apply their server optimizer
# to that mean). Their replies can be folded into a running sum as they arrive; the others need them all.
MEAN_BASED = frozenset({"fedavg", "fedprox", "fedadam", "fedyogi"})


def _common(c: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "fraction_train": float(c.get("fraction-train", 1.0)),
        "fraction_evaluate": float(c.get("fraction-evaluate", 0.0)),
        "min_train_nodes": int(c.get("min-train-nodes", 2)),
        "min_evaluate_nodes": int(c.get("min-evaluate-nodes", 2)),
        "min_available_nodes": int(c.get("min-available-nodes", 2)),
    }


STRATEGIES: dict[str, Callable[[Mapping[str, Any]], Strategy]] = {
    "fedavg": lambda c: FedAvg(**_common(c)),
    "fedprox": lambda c: FedProx(**_common(c), proximal_mu=float(c.get("proximal-mu", 0.01))),
    "fedadam": lambda c: FedAdam(
        **_common(c), eta=float(c.get("server-learning-rate", 0.1)), tau=float(c.get("server-tau", 1e-3))
    ),
    "fedyogi": lambda c: FedYogi(
        **_common(c), eta=float(c.get("server-learning-rate", 0.01)), tau=float(c.get("server-tau", 1e-3))
    ),
    "fedmedian": lambda c: FedMedian(**_common(c)),
    "fedtrimmedavg": lambda c: FedTrimmedAvg(**_common(c), beta=float(c.get("trimmed-beta", 0.2))),
    "krum": lambda c: Krum(**_common(c), num_malicious_nodes=int(c.get("krum-malicious", 0))),
}


def build_strategy(name: str, config: Mapping[str, Any]) -> Strategy:
    """Build the Flower strategy called ``name`` (case-insensitive) from the run config's kebab-case keys."""
    key = name.lower()
    if key not in STRATEGIES:
        raise ServerConfigError(f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}")
    fraction = float(config.get("fraction-train", 1.0))
    if not 0.0 < fraction <= 1.0:
        raise ServerConfigError(f"fraction-train must be in (0, 1], got {fraction}")
    return STRATEGIES[key](config)

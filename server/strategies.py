"""Strategy choice by name: Flower's own strategies, configured from typed options, never rewritten."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flwr.serverapp.strategy import (
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    QFedAvg,
    Strategy,
)

from server.errors import ServerConfigError
from shared_models.run_config import setting

# Strategies whose aggregation is a weighted mean of the replies (FedAdam/FedYogi apply their server optimizer
# to that mean). Their replies can be folded into a running sum as they arrive; the others need them all.
MEAN_BASED = frozenset({"fedavg", "fedprox", "fedadam", "fedyogi"})


@dataclass(frozen=True, kw_only=True)
class StrategyOptions:
    """The strategies' settings, parsed once from the run config (its kebab-case keys) by :meth:`from_run_config`.

    >>> from shared_models.run_config import DEFAULT_RUN_CONFIG
    >>> StrategyOptions.from_run_config({**DEFAULT_RUN_CONFIG, "fraction-train": 0.5}).fraction_train
    0.5
    """

    fraction_train: float
    fraction_evaluate: float
    min_train_nodes: int
    min_evaluate_nodes: int
    min_available_nodes: int
    proximal_mu: float
    server_learning_rate: float
    server_tau: float
    trimmed_beta: float
    krum_malicious: int
    qfedavg_q: float = 0.1
    """q-FedAvg's fairness parameter (``qfedavg-q``): 0 is FedAvg; a larger q weighs clients with a higher loss more."""
    client_learning_rate: float = 1.0
    """The clients' ``learning-rate``: q-FedAvg estimates its Lipschitz constant as 1 / learning rate."""

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction_train <= 1.0:
            raise ServerConfigError(f"fraction-train must be in (0, 1], got {self.fraction_train}")
        if not 0.0 <= self.fraction_evaluate <= 1.0:
            raise ServerConfigError(f"fraction-evaluate must be in [0, 1], got {self.fraction_evaluate}")
        if self.qfedavg_q < 0:
            raise ServerConfigError(f"qfedavg-q must be >= 0 (0 is FedAvg), got {self.qfedavg_q}")

    @classmethod
    def from_run_config(cls, run: Mapping[str, Any]) -> StrategyOptions:
        return cls(
            fraction_train=setting(run, "fraction-train"),
            fraction_evaluate=setting(run, "fraction-evaluate"),
            min_train_nodes=setting(run, "min-train-nodes"),
            min_evaluate_nodes=setting(run, "min-evaluate-nodes"),
            min_available_nodes=setting(run, "min-available-nodes"),
            proximal_mu=setting(run, "proximal-mu"),
            server_learning_rate=setting(run, "server-learning-rate"),
            server_tau=setting(run, "server-tau"),
            trimmed_beta=setting(run, "trimmed-beta"),
            krum_malicious=setting(run, "krum-malicious"),
            qfedavg_q=setting(run, "qfedavg-q"),
            client_learning_rate=setting(run, "learning-rate"),
        )


def _common(o: StrategyOptions) -> dict[str, Any]:
    return {
        "fraction_train": o.fraction_train,
        "fraction_evaluate": o.fraction_evaluate,
        "min_train_nodes": o.min_train_nodes,
        "min_evaluate_nodes": o.min_evaluate_nodes,
        "min_available_nodes": o.min_available_nodes,
    }


STRATEGIES: dict[str, Callable[[StrategyOptions], Strategy]] = {
    "fedavg": lambda o: FedAvg(**_common(o)),
    "fedprox": lambda o: FedProx(**_common(o), proximal_mu=o.proximal_mu),
    "fedadam": lambda o: FedAdam(**_common(o), eta=o.server_learning_rate, tau=o.server_tau),
    "fedyogi": lambda o: FedYogi(**_common(o), eta=o.server_learning_rate, tau=o.server_tau),
    "fedmedian": lambda o: FedMedian(**_common(o)),
    "fedtrimmedavg": lambda o: FedTrimmedAvg(**_common(o), beta=o.trimmed_beta),
    "krum": lambda o: Krum(**_common(o), num_malicious_nodes=o.krum_malicious),
    # q-FedAvg (Li et al., 2020): fair resource allocation, reweighting towards the sites the model serves worst;
    # the clients report their loss as train-loss
    "qfedavg": lambda o: QFedAvg(
        **_common(o), client_learning_rate=o.client_learning_rate, q=o.qfedavg_q, train_loss_key="train-loss"
    ),
}


def strategy_name(name: str) -> str:
    """``name`` as a key of :data:`STRATEGIES` (case-insensitive); an unknown name lists the known ones."""
    key = name.lower()
    if key not in STRATEGIES:
        raise ServerConfigError(f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}")
    return key


def build_strategy(name: str, options: StrategyOptions) -> Strategy:
    """Build the Flower strategy called ``name`` (case-insensitive) with ``options``."""
    return STRATEGIES[strategy_name(name)](options)

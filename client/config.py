"""The client's settings, parsed once at the app boundary from the Flower context."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import Context

from client.errors import ClientConfigError
from shared_models.federation import FederatedData
from shared_models.registry import ModelConfig
from shared_models.run_config import DEFAULT_RUN_CONFIG, setting

DP_MODES = ("bk", "ghost", "hooks", "ew", "functorch")


@dataclass(frozen=True, kw_only=True)
class PrivacyConfig:
    """DP-SGD settings. ``noise_multiplier`` 0 means: calibrate it so the whole run spends ``target_epsilon``."""

    enabled: bool = DEFAULT_RUN_CONFIG["dp"]
    noise_multiplier: float = DEFAULT_RUN_CONFIG["noise-multiplier"]
    target_epsilon: float = DEFAULT_RUN_CONFIG["target-epsilon"]
    target_delta: float = DEFAULT_RUN_CONFIG["target-delta"]
    max_grad_norm: float = DEFAULT_RUN_CONFIG["max-grad-norm"]
    grad_sample_mode: str = DEFAULT_RUN_CONFIG["dp-mode"]
    planned_rounds: int = 1
    fix_model: bool = DEFAULT_RUN_CONFIG["dp-fix-model"]
    """Replace the layers Opacus refuses (BatchNorm -> GroupNorm, LSTM/GRU/RNN -> DP versions) instead of
    refusing the model."""

    def __post_init__(self) -> None:
        if not self.enabled:
            return
        if self.grad_sample_mode not in DP_MODES:
            raise ClientConfigError(f"dp-mode {self.grad_sample_mode!r} is not one of {', '.join(DP_MODES)}")
        if self.target_epsilon <= 0:
            raise ClientConfigError(f"target-epsilon must be > 0, got {self.target_epsilon}")
        if not 0 < self.target_delta < 1:
            raise ClientConfigError(f"target-delta must be in (0, 1), got {self.target_delta}")
        if self.max_grad_norm <= 0:
            raise ClientConfigError(f"max-grad-norm must be > 0, got {self.max_grad_norm}")
        if self.noise_multiplier < 0:
            raise ClientConfigError(f"noise-multiplier must be >= 0 (0 = calibrate), got {self.noise_multiplier}")


@dataclass(frozen=True, kw_only=True)
class ClientConfig:
    model: str
    data: FederatedData
    partition_id: int
    num_partitions: int
    node_data_path: str
    local_epochs: int
    batch_size: int
    learning_rate: float
    momentum: float
    privacy: PrivacyConfig
    device: torch.device
    state_dir: str = ""
    run_key: str = ""
    node_name: str = ""
    model_config: ModelConfig | None = None
    """How the model is built (model-options, project-dir, BatchNorm replaced for DP); ``None``: ``model`` as is."""
    learning_rate_decay: float = DEFAULT_RUN_CONFIG["learning-rate-decay"]
    """The learning rate of round r is ``learning_rate * learning_rate_decay ** (r - 1)``: DP-SGD's noisy steps
    settle better when they shrink towards the end of the run."""

    @property
    def model_setup(self) -> ModelConfig:
        return self.model_config or ModelConfig(
            model=self.model, fix_for_dp=self.privacy.enabled and self.privacy.fix_model
        )

    def learning_rate_at(self, server_round: int) -> float:
        return self.learning_rate * self.learning_rate_decay ** max(0, server_round - 1)

    @property
    def identity(self) -> dict[str, int | str]:
        """Who this client is in the server's ledger: its node name on a real node, its partition in simulation."""
        return {"partition-id": self.partition_id, **({"node-name": self.node_name} if self.node_name else {})}

    @classmethod
    def from_context(cls, context: Context) -> ClientConfig:
        """Run settings from the run config (every key required: a missing one is named); this node's facts
        (``data-path``, ``device``, ``state-dir``, ``node-name``, ``partition-id``, ``num-partitions``) from the
        node config."""
        run, node = context.run_config, context.node_config
        local_epochs, batch_size = setting(run, "local-epochs"), setting(run, "batch-size")
        if local_epochs < 1 or batch_size < 1:
            raise ClientConfigError("local-epochs and batch-size must be at least 1")
        lr, decay = setting(run, "learning-rate"), setting(run, "learning-rate-decay")
        if lr <= 0 or decay <= 0:
            raise ClientConfigError(
                f"learning-rate and learning-rate-decay must be > 0, got {lr} and {decay} "
                "(a decay of 1 keeps the learning rate fixed; 0.9 shrinks it by 10% a round)"
            )
        return cls(
            model=setting(run, "model"),
            model_config=ModelConfig.from_run_config(run),
            data=FederatedData.from_run_config(run),
            partition_id=int(node.get("partition-id", 0)),
            num_partitions=int(node.get("num-partitions", 1)),
            node_data_path=_node_data_path(run, node),
            local_epochs=local_epochs,
            batch_size=batch_size,
            learning_rate=lr,
            learning_rate_decay=decay,
            momentum=setting(run, "momentum"),
            privacy=PrivacyConfig(
                enabled=setting(run, "dp"),
                noise_multiplier=setting(run, "noise-multiplier"),
                target_epsilon=setting(run, "target-epsilon"),
                target_delta=setting(run, "target-delta"),
                max_grad_norm=setting(run, "max-grad-norm"),
                grad_sample_mode=setting(run, "dp-mode"),
                planned_rounds=setting(run, "num-server-rounds"),
                fix_model=setting(run, "dp-fix-model"),
            ),
            device=choose_device(str(node.get("device", setting(run, "device")))),
            state_dir=str(node.get("state-dir", "")),
            node_name=str(node.get("node-name", "")),
            run_key=setting(run, "run-id") or f"flower-run-{context.run_id}",
        )


def _node_data_path(run: Mapping[str, Any], node: Mapping[str, Any]) -> str:
    """The node's own file: ``data-path`` in its node config; in a simulation of real nodes, the run config's
    ``node-data-paths`` entry for this partition (one file per simulated node)."""
    if node.get("data-path"):
        return str(node["data-path"])
    paths = [p.strip() for p in setting(run, "node-data-paths").split(",") if p.strip()]
    if paths and "partition-id" in node:
        index = int(node["partition-id"])
        if not 0 <= index < len(paths):
            raise ClientConfigError(f"node-data-paths lists {len(paths)} files but this is simulated node {index}")
        return paths[index]
    return ""


def choose_device(name: str) -> torch.device:
    """``auto`` picks CUDA when this node has it, else the CPU; ``cpu``/``cuda``/``cuda:N`` force a choice."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ClientConfigError(f"device {name!r} was asked for but this node has no CUDA GPU; use auto or cpu")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise ClientConfigError(f"unknown device {name!r}; use auto, cpu or cuda") from e

"""The client's settings, parsed once at the app boundary from the Flower context."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from flwr.app import Context

from client.errors import ClientConfigError
from shared_models.federation import FederatedData

DP_MODES = ("ghost", "hooks", "ew", "functorch")


@dataclass(frozen=True, kw_only=True)
class PrivacyConfig:
    """DP-SGD settings. ``noise_multiplier`` 0 means: calibrate it so the whole run spends ``target_epsilon``."""

    enabled: bool = True
    noise_multiplier: float = 0.0
    target_epsilon: float = 3.0
    target_delta: float = 1e-5
    max_grad_norm: float = 1.0
    grad_sample_mode: str = "ghost"
    planned_rounds: int = 1

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
    learning_rate_decay: float = 1.0
    """The learning rate of round r is ``learning_rate * learning_rate_decay ** (r - 1)``: DP-SGD's noisy steps
    settle better when they shrink towards the end of the run."""

    def learning_rate_at(self, server_round: int) -> float:
        return self.learning_rate * self.learning_rate_decay ** max(0, server_round - 1)

    @property
    def identity(self) -> dict[str, int | str]:
        """Who this client is in the server's ledger: its node name on a real node, its partition in simulation."""
        return {"partition-id": self.partition_id, **({"node-name": self.node_name} if self.node_name else {})}

    @classmethod
    def from_context(cls, context: Context) -> ClientConfig:
        """Run settings from the run config; this node's facts (``data-path``, ``device``, ``state-dir``,
        ``node-name``, ``partition-id``, ``num-partitions``) from the node config."""
        run, node = context.run_config, context.node_config
        local_epochs, batch_size = int(run.get("local-epochs", 1)), int(run.get("batch-size", 32))
        if local_epochs < 1 or batch_size < 1:
            raise ClientConfigError("local-epochs and batch-size must be at least 1")
        lr, decay = float(run.get("learning-rate", 0.05)), float(run.get("learning-rate-decay", 1.0))
        if lr <= 0 or decay <= 0:
            raise ClientConfigError(
                f"learning-rate and learning-rate-decay must be > 0, got {lr} and {decay} "
                "(a decay of 1 keeps the learning rate fixed; 0.9 shrinks it by 10% a round)"
            )
        return cls(
            model=str(run.get("model", "digits-cnn")),
            data=FederatedData.from_run_config(run),
            partition_id=int(node.get("partition-id", 0)),
            num_partitions=int(node.get("num-partitions", 1)),
            node_data_path=_node_data_path(run, node),
            local_epochs=local_epochs,
            batch_size=batch_size,
            learning_rate=lr,
            learning_rate_decay=decay,
            momentum=float(run.get("momentum", 0.0)),
            privacy=PrivacyConfig(
                enabled=bool(run.get("dp", True)),
                noise_multiplier=float(run.get("noise-multiplier", 0.0)),
                target_epsilon=float(run.get("target-epsilon", 3.0)),
                target_delta=float(run.get("target-delta", 1e-5)),
                max_grad_norm=float(run.get("max-grad-norm", 1.0)),
                grad_sample_mode=str(run.get("dp-mode", "ghost")),
                planned_rounds=int(run.get("num-server-rounds", 1)),
            ),
            device=choose_device(str(node.get("device", run.get("device", "auto")))),
            state_dir=str(node.get("state-dir", "")),
            node_name=str(node.get("node-name", "")),
            run_key=str(run.get("run-id", "")) or f"flower-run-{context.run_id}",
        )


def _node_data_path(run: dict, node: dict) -> str:
    """The node's own file: ``data-path`` in its node config; in a simulation of real nodes, the run config's
    ``node-data-paths`` entry for this partition (one file per simulated node)."""
    if node.get("data-path"):
        return str(node["data-path"])
    paths = [p.strip() for p in str(run.get("node-data-paths", "")).split(",") if p.strip()]
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

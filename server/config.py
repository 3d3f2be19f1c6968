"""The server's settings, parsed once at the app boundary from the Flower context."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import Context

from server.errors import ServerConfigError
from server.strategies import STRATEGIES
from shared_models.federation import FederatedData


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    num_rounds: int
    strategy: str
    model: str
    data: FederatedData
    run_dir: Path
    dp: bool
    target_epsilon: float
    target_delta: float
    round_timeout: float | None
    stream_aggregation: bool
    progress: bool
    seed: int
    raw: dict[str, Any]

    @classmethod
    def from_context(cls, context: Context) -> ServerConfig:
        run = dict(context.run_config)
        num_rounds = int(run.get("num-server-rounds", 3))
        if num_rounds < 1:
            raise ServerConfigError(f"num-server-rounds must be at least 1, got {num_rounds}")
        strategy = str(run.get("strategy", "fedavg")).lower()
        if strategy not in STRATEGIES:
            raise ServerConfigError(f"unknown strategy {strategy!r}; choose one of: {', '.join(STRATEGIES)}")
        run_id = str(run.get("run-id", "")) or time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
        timeout = float(run.get("round-timeout", 0))
        return cls(
            num_rounds=num_rounds,
            strategy=strategy,
            model=str(run.get("model", "digits-cnn")),
            data=FederatedData.from_run_config(run),
            run_dir=Path(str(run.get("runs-dir", "runs"))).expanduser().resolve() / run_id,
            dp=bool(run.get("dp", True)),
            target_epsilon=float(run.get("target-epsilon", 3.0)),
            target_delta=float(run.get("target-delta", 1e-5)),
            round_timeout=timeout if timeout > 0 else None,
            stream_aggregation=bool(run.get("stream-aggregation", True)),
            progress=bool(run.get("progress", True)),
            seed=int(run.get("seed", 0)),
            raw=run,
        )

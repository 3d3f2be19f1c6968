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
    min_replies: int
    straggler_timeout: float | None
    max_in_flight: int
    resume_from: Path | None
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
        run_dir = Path(str(run.get("runs-dir", "runs"))).expanduser().resolve() / run_id
        resume = str(run.get("resume-from", ""))
        resume_from = Path(resume).expanduser().resolve() if resume else None
        if resume_from is not None:
            if run.get("run-id") and str(run["run-id"]) != resume_from.name:
                raise ServerConfigError(
                    f"resume-from {resume_from} is run {resume_from.name!r} but run-id is {run['run-id']!r}: the "
                    "clients find their privacy accountants by run id, so a resumed run must keep its own "
                    "(fedge run --resume RUN_DIR sets both)"
                )
            run_dir = resume_from  # a resumed run goes on in its own directory
        timeout = float(run.get("round-timeout", 0))
        straggler = float(run.get("straggler-timeout", 0))
        min_replies = int(run.get("min-replies", 1))
        if min_replies < 0:
            raise ServerConfigError(f"min-replies must be >= 0, got {min_replies}")
        max_in_flight = int(run.get("max-in-flight", 0))
        if max_in_flight < 0:
            raise ServerConfigError(f"max-in-flight must be >= 0 (0 = every message at once), got {max_in_flight}")
        return cls(
            num_rounds=num_rounds,
            strategy=strategy,
            model=str(run.get("model", "digits-cnn")),
            data=FederatedData.from_run_config(run),
            run_dir=run_dir,
            dp=bool(run.get("dp", True)),
            target_epsilon=float(run.get("target-epsilon", 3.0)),
            target_delta=float(run.get("target-delta", 1e-5)),
            round_timeout=timeout if timeout > 0 else None,
            min_replies=min_replies,
            straggler_timeout=straggler if straggler > 0 else None,
            max_in_flight=max_in_flight,
            resume_from=resume_from,
            stream_aggregation=bool(run.get("stream-aggregation", True)),
            progress=bool(run.get("progress", True)),
            seed=int(run.get("seed", 0)),
            raw=run,
        )

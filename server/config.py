"""The server's settings, parsed once at the app boundary from the Flower context."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import Context

from server.errors import ServerConfigError
from server.parameter_average import check_decay
from server.strategies import StrategyOptions, strategy_name
from shared_models.federation import FederatedData
from shared_models.registry import ModelConfig
from shared_models.run_config import mint_run_id, setting
from shared_models.run_dir import RunDir


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    num_rounds: int
    strategy: str
    strategy_options: StrategyOptions
    model: str
    model_config: ModelConfig
    data: FederatedData
    run_dir: Path
    dp: bool
    target_epsilon: float
    target_delta: float
    round_timeout: float | None
    min_replies: int
    straggler_timeout: float | None
    max_in_flight: int
    evaluate_every: int
    site_accuracy_threshold: float
    budget_aware_sampling: bool
    resume_from: Path | None
    stream_aggregation: bool
    pack_arrays: bool
    """On a deployment, send each message's arrays as one Array (``pack-arrays``; :mod:`server.packed_grid`)."""
    server_ema: float
    """Decay of the server's moving average of the global models (``server-ema``); 0 = off."""
    progress: bool
    seed: int
    raw: dict[str, Any]
    """The whole run config as given, for the run record (``config.json``); code reads the typed fields."""

    @classmethod
    def from_context(cls, context: Context) -> ServerConfig:
        return cls.from_run_config(context.run_config)

    @classmethod
    def from_run_config(cls, run: Mapping[str, Any]) -> ServerConfig:
        """Parse the whole run config once; a missing key or a bad value fails here, naming the key."""
        run = dict(run)
        num_rounds = setting(run, "num-server-rounds")
        if num_rounds < 1:
            raise ServerConfigError(f"num-server-rounds must be at least 1, got {num_rounds}")
        strategy = strategy_name(setting(run, "strategy"))
        run_id = setting(run, "run-id")
        resume = setting(run, "resume-from")
        resume_from = Path(resume).expanduser().resolve() if resume else None
        if resume_from is not None:
            if run_id and run_id != resume_from.name:
                raise ServerConfigError(
                    f"resume-from {resume_from} is run {resume_from.name!r} but run-id is {run_id!r}: the "
                    "clients find their privacy accountants by run id, so a resumed run must keep its own "
                    "(fedge run --resume RUN_DIR sets both)"
                )
            run_dir = resume_from  # a resumed run goes on in its own directory
        else:
            runs_dir = Path(setting(run, "runs-dir")).expanduser().resolve()
            run_dir = RunDir.of(runs_dir, run_id or mint_run_id()).path
        timeout, straggler = setting(run, "round-timeout"), setting(run, "straggler-timeout")
        min_replies = setting(run, "min-replies")
        if min_replies < 0:
            raise ServerConfigError(f"min-replies must be >= 0, got {min_replies}")
        max_in_flight = setting(run, "max-in-flight")
        if max_in_flight < 0:
            raise ServerConfigError(f"max-in-flight must be >= 0 (0 = every message at once), got {max_in_flight}")
        evaluate_every = setting(run, "evaluate-every")
        if evaluate_every < 1:
            raise ServerConfigError(
                f"evaluate-every must be at least 1 (evaluate every k rounds), got {evaluate_every}; "
                "to evaluate on the nodes not at all, set fraction-evaluate = 0"
            )
        return cls(
            num_rounds=num_rounds,
            strategy=strategy,
            strategy_options=StrategyOptions.from_run_config(run),
            model=setting(run, "model"),
            model_config=ModelConfig.from_run_config(run),
            data=FederatedData.from_run_config(run),
            run_dir=run_dir,
            dp=setting(run, "dp"),
            target_epsilon=setting(run, "target-epsilon"),
            target_delta=setting(run, "target-delta"),
            round_timeout=timeout if timeout > 0 else None,
            min_replies=min_replies,
            straggler_timeout=straggler if straggler > 0 else None,
            max_in_flight=max_in_flight,
            evaluate_every=evaluate_every,
            site_accuracy_threshold=setting(run, "site-accuracy-threshold"),
            budget_aware_sampling=setting(run, "budget-aware-sampling"),
            resume_from=resume_from,
            stream_aggregation=setting(run, "stream-aggregation"),
            pack_arrays=setting(run, "pack-arrays"),
            server_ema=check_decay(setting(run, "server-ema")),
            progress=setting(run, "progress"),
            seed=setting(run, "seed"),
            raw=run,
        )

"""Checkpoint and resume: after every round, everything the server needs to go on exactly where it stopped.

``runs/<run-id>/resume.pt`` holds, as of the end of the last finished round: the global arrays, the strategy's
state (FedAdam/FedYogi's server-optimizer moments ``m_t``/``v_t`` and the arrays they step from), the round
number, the privacy ledger, the state of Python's ``random`` (Flower's strategies sample nodes with it) and of
torch's generator, and the per-round metrics so far. It is written through the run directory's one atomic write
(:func:`shared_models.run_dir.atomic_write`), so a server killed at any moment leaves either the previous round's
state or this round's, never half of one.

``fedge run --resume RUN_DIR`` submits the same run again with ``resume-from`` set; the ServerApp then loads this
file and continues with the next round into the same run directory. The clients' accountants continue too: they
are kept on each node under its ``state-dir``, keyed by the run id, which a resumed run keeps.

>>> import random; from flwr.serverapp.strategy import FedAdam
>>> strategy = FedAdam(); strategy.m_t = {"w": np.ones(2, np.float32)}
>>> state = ServerState(server_round=2, arrays={"w": np.zeros(2, np.float32)}, strategy=strategy_state(strategy),
...                     ledger={}, python_random=random.getstate(), torch_random=torch.get_rng_state(), rounds=[])
>>> again = FedAdam(); load_strategy_state(again, state.strategy); again.m_t["w"].tolist()
[1.0, 1.0]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.serverapp.strategy import Strategy

from server.errors import ServerError
from shared_models.run_dir import RunDir, atomic_write

FORMAT_VERSION = 1


class ResumeError(ServerError):
    """A run that cannot be resumed (no saved state, or a state that does not fit the run)."""


@dataclass
class ServerState:
    server_round: int
    arrays: dict[str, np.ndarray]
    strategy: dict[str, dict[str, np.ndarray] | None]
    ledger: dict[str, Any]
    python_random: tuple
    torch_random: torch.Tensor
    rounds: list[dict[str, Any]]
    average: dict[str, Any] | None = None
    """The server's parameter average (``server-ema``: :class:`server.parameter_average.ParameterAverage`'s
    ``state_dict``), or None when the run does not average."""


def _is_array_dict(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(isinstance(v, np.ndarray) for v in value.values())


# Attributes of Flower's strategies that hold state between rounds and may still be None before the first round.
_KNOWN_STATE = ("current_arrays", "m_t", "v_t")


def strategy_state(strategy: Strategy) -> dict[str, dict[str, np.ndarray] | None]:
    """The strategy's round-to-round state: every attribute that is a dict of NumPy arrays (FedOpt's moments and
    current arrays), plus the known ones still unset. Hyperparameters come from the run config, not from here."""
    state: dict[str, dict[str, np.ndarray] | None] = {}
    for name, value in vars(strategy).items():
        if _is_array_dict(value):
            state[name] = {k: np.array(v, copy=True) for k, v in value.items()}
        elif value is None and name in _KNOWN_STATE:
            state[name] = None
    return state


def load_strategy_state(strategy: Strategy, state: dict[str, dict[str, np.ndarray] | None]) -> None:
    for name, value in state.items():
        if not hasattr(strategy, name):
            raise ResumeError(
                f"the saved strategy state has {name!r}, which {type(strategy).__name__} does not have; was the run "
                "started with another strategy? Resume with the run's own config"
            )
        setattr(strategy, name, None if value is None else {k: np.array(v, copy=True) for k, v in value.items()})


def _to_tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}


def _to_arrays(tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in tensors.items()}


def save_server_state(run_dir: Path, state: ServerState) -> Path:
    """Write ``run_dir/resume.pt`` whole or not at all (temporary file, fsync, rename)."""
    payload = {
        "format": FORMAT_VERSION,
        "server-round": state.server_round,
        "arrays": _to_tensors(state.arrays),
        "strategy": {k: None if v is None else _to_tensors(v) for k, v in state.strategy.items()},
        "ledger": state.ledger,
        "python-random": state.python_random,
        "torch-random": state.torch_random,
        "rounds": state.rounds,
    }
    if state.average is not None:
        payload["parameter-average"] = {
            "weight": float(state.average["weight"]),
            "average": _to_tensors(state.average["average"]),
        }
    return atomic_write(RunDir(run_dir).resume, lambda fh: torch.save(payload, fh))


def load_server_state(run_dir: Path) -> ServerState:
    run = RunDir(run_dir)
    path = run.resume
    if not run.can_resume():
        raise ResumeError(
            f"{run_dir} holds no saved server state ({path.name}); a run can be resumed once its first round has "
            "finished. Check the run directory (runs/<run-id>/)"
        )
    try:
        payload = torch.load(path, weights_only=True)
    except Exception as e:  # a torn or foreign file: say which and why
        raise ResumeError(f"cannot read the saved server state {path}: {e}") from e
    if payload.get("format") != FORMAT_VERSION:
        raise ResumeError(f"{path} was written by another version of fedge (format {payload.get('format')})")
    return ServerState(
        server_round=int(payload["server-round"]),
        arrays=_to_arrays(payload["arrays"]),
        strategy={k: None if v is None else _to_arrays(v) for k, v in payload["strategy"].items()},
        ledger=payload["ledger"],
        python_random=_as_random_state(payload["python-random"]),
        torch_random=payload["torch-random"],
        rounds=list(payload["rounds"]),
        average=_average(payload.get("parameter-average")),
    )


def _average(saved: dict[str, Any] | None) -> dict[str, Any] | None:
    """The saved parameter average as ``ParameterAverage.load_state_dict`` takes it (None: the run had none)."""
    if saved is None:
        return None
    return {"weight": float(saved["weight"]), "average": _to_arrays(saved["average"])}


def _as_random_state(value: Any) -> tuple:
    """``random.setstate`` wants nested tuples; a round trip may hand back lists."""
    version, internal, gauss = value
    return (int(version), tuple(int(x) for x in internal), gauss)

"""DP-SGD on the client with Opacus, and an accountant that lives as long as the run.

Flower's own Opacus example makes a fresh ``PrivacyEngine`` every round, so the ε it reports covers one round.
Here the RDP accountant's history is saved into the node's ``Context.state`` after every round and restored
before the next, so ε accumulates over every round this client takes part in, and the budget
(``target-epsilon``) is checked *before* training: a round that would overspend is refused.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from flwr.app import ConfigRecord, RecordDict
from opacus import PrivacyEngine
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from torch import nn
from torch.utils.data import DataLoader

from client.config import PrivacyConfig
from client.errors import PrivacyBudgetExhaustedError

STATE_KEY = "dp-accountant"


CALIBRATION_KEY = "dp-calibration"


def load_accountant(state: RecordDict) -> RDPAccountant:
    """The accountant saved in this node's state, or a fresh one on the node's first round."""
    accountant = RDPAccountant()
    if STATE_KEY in state:
        history = json.loads(str(state[STATE_KEY]["history"]))
        accountant.load_state_dict({"history": [tuple(h) for h in history], "mechanism": "rdp"})
    return accountant


def save_accountant(state: RecordDict, accountant: RDPAccountant) -> None:
    state[STATE_KEY] = ConfigRecord({"history": json.dumps(accountant.state_dict()["history"])})


@dataclass(frozen=True)
class RoundPlan:
    """What one round of DP-SGD will cost: its noise, sampling rate and (expected) steps, and ε afterwards."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    epsilon_after: float


def calibrated_noise(config: PrivacyConfig, *, sample_rate: float, total_steps: int, state: RecordDict) -> float:
    """The noise multiplier that spends ``target_epsilon`` in ``total_steps``; found once, then kept in the state.

    The search takes about a second of RDP arithmetic; its inputs are fixed for the run, so it is done once per node.
    """
    key = json.dumps([config.target_epsilon, config.target_delta, sample_rate, total_steps])
    cached = state.get(CALIBRATION_KEY)
    if cached is not None and cached.get("inputs") == key:
        return float(cached["noise-multiplier"])
    sigma = get_noise_multiplier(
        target_epsilon=config.target_epsilon,
        target_delta=config.target_delta,
        sample_rate=sample_rate,
        steps=total_steps,
        accountant="rdp",
    )
    state[CALIBRATION_KEY] = ConfigRecord({"inputs": key, "noise-multiplier": float(sigma)})
    return float(sigma)


def plan_round(
    config: PrivacyConfig,
    accountant: RDPAccountant,
    *,
    num_examples: int,
    batch_size: int,
    local_epochs: int,
    state: RecordDict | None = None,
) -> RoundPlan:
    """Decide the noise for this round and what ε will be after it; refuse if that exceeds the budget.

    With ``noise_multiplier`` 0 the noise is calibrated so that ``planned_rounds`` rounds of ``local_epochs``
    epochs each spend exactly ``target_epsilon`` (taking part in fewer rounds spends less).
    """
    # Opacus's Poisson loader samples each example with rate 1 / (batches per epoch) and takes that many steps.
    batches = math.ceil(num_examples / batch_size)
    sample_rate = 1.0 / batches
    steps = local_epochs * batches
    sigma = config.noise_multiplier
    if sigma <= 0:
        sigma = calibrated_noise(
            config, sample_rate=sample_rate, total_steps=steps * config.planned_rounds, state=state or RecordDict()
        )
    after_accountant = RDPAccountant()
    after_accountant.history = [*accountant.history, (sigma, sample_rate, steps)]
    after = after_accountant.get_epsilon(config.target_delta)
    if after > config.target_epsilon:
        before = accountant.get_epsilon(config.target_delta) if accountant.history else 0.0
        raise PrivacyBudgetExhaustedError(
            f"privacy budget exhausted: ε is {before:.3f} and this round would raise it to {after:.3f}, "
            f"over the target ε={config.target_epsilon:g} (δ={config.target_delta:g}); this client sits out the "
            "rest of the run. Raise target-epsilon, the noise multiplier, or plan fewer rounds"
        )
    return RoundPlan(sigma, sample_rate, steps, after)


def _merged(history: list[tuple[float, float, int]]) -> list[tuple[float, float, int]]:
    """Consecutive entries with the same noise and sample rate as one (Opacus merges them as it steps)."""
    out: list[tuple[float, float, int]] = []
    for sigma, rate, steps in history:
        if out and out[-1][0] == sigma and out[-1][1] == rate:
            out[-1] = (sigma, rate, out[-1][2] + steps)
        else:
            out.append((float(sigma), float(rate), int(steps)))
    return out


def epsilon_after_round(
    accountant: RDPAccountant, plan: RoundPlan, history_before: list[tuple[float, float, int]], delta: float
) -> float:
    """ε after a round: the plan's figure when the accountant took exactly the planned steps, else recomputed.

    The RDP arithmetic takes about a second; plan_round has just done it for the same history, and on real nodes
    every round runs in a fresh process, so it is not paid twice.
    """
    planned = [*history_before, (plan.noise_multiplier, plan.sample_rate, plan.steps)]
    if _merged(list(accountant.history)) == _merged(planned):
        return plan.epsilon_after
    return accountant.get_epsilon(delta)


def make_private(
    model: nn.Module,
    optimizer,
    loader: DataLoader,
    criterion: nn.Module,
    *,
    plan: RoundPlan,
    config: PrivacyConfig,
    accountant: RDPAccountant,
):
    """Wrap model, optimizer, loader and loss for DP-SGD with Poisson sampling, on the run-long accountant.

    Returns ``(model, optimizer, loader, criterion)``; in ghost-clipping mode the loss is Opacus's
    double-backward wrapper, otherwise the given one.
    """
    engine = PrivacyEngine(accountant="rdp")
    engine.accountant = accountant
    wrapped = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        criterion=criterion,
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=config.max_grad_norm,
        poisson_sampling=True,
        grad_sample_mode=config.grad_sample_mode,
    )
    if config.grad_sample_mode == "ghost":
        dp_model, dp_optimizer, dp_criterion, dp_loader = wrapped
    else:
        (dp_model, dp_optimizer, dp_loader), dp_criterion = wrapped, criterion
    return dp_model, dp_optimizer, dp_loader, dp_criterion

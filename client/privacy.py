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
from opacus.layers import DPGRU, DPLSTM, DPRNN
from opacus.layers.dp_rnn import RNNLinear
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader

from client.bk_clipping import BookKeeping, BookKeepingLoss
from client.bk_clipping import unsupported_layers as bk_unsupported_layers
from client.config import PrivacyConfig
from client.errors import ModelNotPrivateError, PrivacyBudgetExhaustedError

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


def reported_history(accountant: RDPAccountant) -> str:
    """The accountant's history as the client reports it to the server (``dp-history`` in its reply): JSON
    ``[[σ, q, steps], ...]``, consecutive rounds of the same σ and q merged. ε is the RDP composition of exactly
    these entries, so the server's ledger (and anyone reading privacy.json) can recompute it and project the next
    round's."""
    return json.dumps([list(h) for h in _merged(list(accountant.history))])


def steps_taken(accountant: RDPAccountant, history_before: list[tuple[float, float, int]]) -> int:
    """The DP-SGD steps the accountant recorded since ``history_before`` (this round's steps)."""
    return sum(int(h[2]) for h in accountant.history) - sum(int(h[2]) for h in history_before)


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
            config,
            sample_rate=sample_rate,
            total_steps=steps * config.planned_rounds,
            # a node's first round has an empty state (falsy): the calibration must land in it all the same
            state=state if state is not None else RecordDict(),
        )
    after_accountant = RDPAccountant()
    # RDP is linear in the steps of one (σ, q): merging this round into the last entry when they share them gives
    # the same ε with one evaluation of the RDP curve instead of two (0.2-0.5 s of CPU each on 2 cores)
    after_accountant.history = _merged([*accountant.history, (sigma, sample_rate, steps)])
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


#: What each kind of offending layer is replaced by under ``dp-fix-model`` (Opacus's own fixers, plus nn.RNN).
FIXABLE = {
    "BatchNorm1d": "GroupNorm",
    "BatchNorm2d": "GroupNorm",
    "BatchNorm3d": "GroupNorm",
    "SyncBatchNorm": "GroupNorm",
    "LSTM": "opacus.layers.DPLSTM",
    "GRU": "opacus.layers.DPGRU",
    "RNN": "opacus.layers.DPRNN",
    "MultiheadAttention": "opacus.layers.DPMultiheadAttention",
    "InstanceNorm1d": "InstanceNorm without running statistics",
    "InstanceNorm2d": "InstanceNorm without running statistics",
    "InstanceNorm3d": "InstanceNorm without running statistics",
}
RECURRENT = {nn.LSTM: DPLSTM, nn.GRU: DPGRU, nn.RNN: DPRNN}


@dataclass(frozen=True)
class DpModel:
    """A model ready for DP-SGD: the model, the layers replaced to get there, and how per-sample gradients are
    clipped (``grad_sample_mode``, with why when it is not the one asked for)."""

    model: nn.Module
    replaced: tuple[str, ...]
    grad_sample_mode: str
    mode_note: str = ""


def unsupported_layers(model: nn.Module) -> list[tuple[str, str, str]]:
    """(layer name, layer type, Opacus's reason) for every layer Opacus refuses for DP-SGD, by name."""
    found = []
    for name, module in model.named_modules():
        if type(module) is nn.RNN:  # Opacus has no validator for it, and no per-sample gradients either
            found.append((name or "(the model)", "RNN", "nn.RNN has no per-sample gradients; DPRNN replaces it"))
            continue
        validator = ModuleValidator.VALIDATORS.get(type(module))
        if validator is None:
            continue
        for error in validator(module):
            reason = str(error).split(". ")[0]
            found.append((name or "(the model)", type(module).__name__, reason))
    return found


def _replace_recurrent(model: nn.Module) -> list[str]:
    """nn.LSTM / nn.GRU / nn.RNN -> Opacus's DPLSTM / DPGRU / DPRNN, weights mapped (their state_dict keeps the
    torch names, so the global model's arrays load and the reply's arrays are the server's)."""
    replaced = []
    for name, module in list(model.named_modules()):
        dp_type = RECURRENT.get(type(module))
        if dp_type is None:
            continue
        kwargs = {
            "input_size": module.input_size,
            "hidden_size": module.hidden_size,
            "num_layers": module.num_layers,
            "bias": module.bias,
            "batch_first": module.batch_first,
            "dropout": module.dropout,
            "bidirectional": module.bidirectional,
        }
        if isinstance(module, nn.RNN):
            kwargs["nonlinearity"] = module.nonlinearity
        dp_module = dp_type(**kwargs)
        dp_module.load_state_dict(module.state_dict())
        dp_module.to(next(module.parameters()).device)
        if name:
            model.set_submodule(name, dp_module)
        else:
            raise ModelNotPrivateError(
                f"the model itself is an {type(module).__name__}; wrap it in a module with an output layer"
            )
        replaced.append(f"{name}: {type(module).__name__} -> {dp_type.__name__} (weights kept)")
    return replaced


def prepare_model(model: nn.Module, *, fix: bool, requested_mode: str) -> DpModel:
    """Check ``model`` with Opacus's validator and make it trainable with DP-SGD.

    Without ``fix`` a layer Opacus refuses is an error listing every such layer and the fix; with it,
    BatchNorm becomes GroupNorm and LSTM/GRU/RNN Opacus's DP versions (every replaced layer named), through
    ``ModuleValidator.fix``. What is still refused after that cannot be made private: an error naming it.
    Train the returned ``DpModel.model``: with replacements it is a new module.
    """
    offending = unsupported_layers(model)
    replaced: list[str] = []
    if offending and not fix:
        listed = "; ".join(f"{name} ({kind}: {reason})" for name, kind, reason in offending)
        fixable = all(kind in FIXABLE for _, kind, _ in offending)
        raise ModelNotPrivateError(
            f"the model has layers Opacus cannot train with DP-SGD: {listed}. "
            + (
                "Set dp-fix-model = true in the run config (fedge simulate --fix-model) to replace them "
                "(BatchNorm -> GroupNorm, LSTM/GRU/RNN -> Opacus's DPLSTM/DPGRU/DPRNN), or change the model"
                if fixable
                else "Change the model (or train without DP: dp = false)"
            )
        )
    if offending:
        replaced += _replace_recurrent(model)
        before = {name: type(m).__name__ for name, m in model.named_modules()}
        model = ModuleValidator.fix(model)  # a fixed copy
        after = {name: type(m).__name__ for name, m in model.named_modules()}
        replaced += [f"{n}: {before[n]} -> {after[n]}" for n in before if n in after and before[n] != after[n]]
    left = ModuleValidator.validate(model, strict=False)
    if left:
        raise ModelNotPrivateError(
            "the model cannot be made private: "
            + "; ".join(str(e).split(". ")[0] for e in left)
            + ". Change these layers (or train without DP: dp = false)"
        )
    mode, note = choose_grad_sample_mode(model, requested_mode)
    return DpModel(model, tuple(replaced), mode, note)


EXPANDED_WEIGHTS_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding, nn.GroupNorm, nn.LayerNorm)


def choose_grad_sample_mode(model: nn.Module, requested: str) -> tuple[str, str]:
    """The per-sample gradient mode for ``model``: the one asked for where it is correct, else the fastest that is,
    and why. ``bk`` (ghost clipping in one backward pass, client/bk_clipping.py) knows Linear, ungrouped Conv1d/2d,
    GroupNorm and LayerNorm; a model with other trainable layers uses Opacus's ghost clipping. Ghost clipping
    (norms without per-sample gradients for Linear/Embedding, hooks or functorch for the rest) fits any validated
    model except one whose layer runs several times per forward pass: a recurrent DP layer's Linear runs once per
    time step, and ghost clipping takes one norm per call, so those use per-sample hooks (which add the calls up).
    Expanded weights know only a few layer types; other models use hooks."""
    recurrent = any(isinstance(m, RNNLinear) for m in model.modules())
    if requested == "bk" and recurrent:
        return (
            "hooks",
            "one-pass ghost clipping takes one norm per layer call and a recurrent layer is called per time step",
        )
    if requested == "bk":
        others = bk_unsupported_layers(model)
        if others:
            return "ghost", f"one-pass ghost clipping does not support {', '.join(others)}"
    if requested == "ghost" and recurrent:
        return "hooks", "ghost clipping takes one norm per layer call and a recurrent layer is called per time step"
    if requested == "ew":
        others = sorted(
            {
                type(m).__name__
                for m in model.modules()
                if any(p.requires_grad for p in m.parameters(recurse=False))
                and not isinstance(m, EXPANDED_WEIGHTS_LAYERS)
            }
        )
        if others:
            return "hooks", f"expanded weights do not support {', '.join(others)}"
    return requested, ""


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
    double-backward wrapper, in ``bk`` mode the one-backward book-keeping loss (client/bk_clipping.py) over
    Opacus's ghost-clipping optimizer, otherwise the given one.
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
        # bk: Opacus's ghost-clipping optimizer (noise, scaling, accountant), its hooks off, one backward pass
        grad_sample_mode="ghost" if config.grad_sample_mode == "bk" else config.grad_sample_mode,
    )
    if config.grad_sample_mode == "bk":
        dp_model, dp_optimizer, _, dp_loader = wrapped
        dp_model.disable_hooks()
        dp_criterion = BookKeepingLoss(BookKeeping(model, max_grad_norm=config.max_grad_norm), criterion)
    elif config.grad_sample_mode == "ghost":
        dp_model, dp_optimizer, dp_criterion, dp_loader = wrapped
    else:
        (dp_model, dp_optimizer, dp_loader), dp_criterion = wrapped, criterion
    return dp_model, dp_optimizer, dp_loader, dp_criterion

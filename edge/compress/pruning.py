"""Pruning: global unstructured magnitude pruning, and channel pruning that rebuilds smaller layers.

The two save different things. Unstructured pruning zeroes the smallest weights across the whole model
(``torch.nn.utils.prune``): the tensors keep their shapes, so the file is as large and as slow as before and
only its compressed (gzip) size shrinks. Channel pruning removes whole output channels (a convolution's filters, a
linear layer's units) and the matching inputs of the layers that read them, so every tensor, the file and the
latency shrink. Both can be followed by a short fine-tune on data the caller supplies.

>>> from shared_models.models import build_model
>>> model = build_model("digits-cnn", input_shape=(1, 8, 8), num_classes=10, seed=0)
>>> result = prune_unstructured(model, sparsity=0.5)
>>> round(result.sparsity, 2)
0.5
>>> smaller = prune_channels(model, amount=0.5)
>>> smaller.shapes_after["features.0"]
(4, 1, 3, 3)
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils import prune

from edge.compress.errors import PruningError, SparsityError
from shared_models.data import ArrayDataset
from shared_models.models import count_parameters
from shared_models.training import train_epochs

CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
PRUNABLE = (*CONVOLUTIONS, nn.Linear)

# Layers a channel passes through unchanged (channel c in, channel c out).
_PASS_THROUGH_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Hardswish,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.Dropout,
    nn.Identity,
)
_PASS_THROUGH_FUNCTIONS = (
    F.relu,
    torch.relu,
    F.max_pool1d,
    F.max_pool2d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.dropout,
    torch.tanh,
    torch.sigmoid,
)
# Layers with one parameter per channel: they shrink with the channels they normalise.
_PER_CHANNEL_MODULES = (nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def check_amount(amount: float, what: str = "sparsity") -> float:
    """``amount`` as a float in [0, 1), else :class:`SparsityError`."""
    try:
        value = float(amount)
    except (TypeError, ValueError):
        raise SparsityError(f"{what} must be a number in [0, 1), got {amount!r}") from None
    if not (0.0 <= value < 1.0) or math.isnan(value):
        raise SparsityError(
            f"{what} must be in [0, 1) (the fraction removed; 1 would remove everything), got {amount!r}"
        )
    return value


def sparsity_of(model: nn.Module) -> float:
    """The fraction of exactly-zero weights over every convolution and linear layer's weight tensor."""
    total, zeros = 0, 0
    for module in model.modules():
        if isinstance(module, PRUNABLE):
            weight = module.weight.detach()
            total += weight.numel()
            zeros += int((weight == 0).sum())
    return zeros / total if total else 0.0


def count_nonzero(model: nn.Module) -> int:
    return sum(int((p.detach() != 0).sum()) for p in model.parameters())


def layer_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Weight shape of every convolution and linear layer, by module name."""
    return {name: tuple(m.weight.shape) for name, m in model.named_modules() if isinstance(m, PRUNABLE)}


@dataclass(frozen=True, kw_only=True)
class FineTune:
    """A short fine-tune after pruning: SGD with momentum on ``data`` for ``epochs`` passes."""

    data: ArrayDataset
    epochs: int = 1
    learning_rate: float = 0.01
    momentum: float = 0.9
    batch_size: int = 64
    seed: int = 0

    def run(self, model: nn.Module) -> float:
        """Train ``model`` in place; return the mean training loss."""
        if len(self.data) == 0:
            raise PruningError("the fine-tune data set is empty; pass the samples to fine-tune on")
        if self.epochs < 0:
            raise PruningError(f"fine-tune epochs must be >= 0, got {self.epochs}")
        if self.epochs == 0:
            return float("nan")
        torch.manual_seed(self.seed)
        optimizer = torch.optim.SGD(model.parameters(), lr=self.learning_rate, momentum=self.momentum)
        loss, _ = train_epochs(
            model,
            self.data.loader(self.batch_size, shuffle=True, seed=self.seed),
            optimizer=optimizer,
            criterion=nn.CrossEntropyLoss(),
            epochs=self.epochs,
        )
        model.eval()
        return loss


@dataclass(frozen=True)
class PruningResult:
    """A pruned copy of the model and what pruning did to it."""

    model: nn.Module
    kind: str
    amount: float
    sparsity: float
    parameters_before: int
    parameters_after: int
    nonzero_before: int
    nonzero_after: int
    shapes_before: dict[str, tuple[int, ...]] = field(default_factory=dict)
    shapes_after: dict[str, tuple[int, ...]] = field(default_factory=dict)
    fine_tune_loss: float | None = None

    def summary(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "amount": self.amount,
            "sparsity": self.sparsity,
            "parameters-before": self.parameters_before,
            "parameters-after": self.parameters_after,
            "nonzero-before": self.nonzero_before,
            "nonzero-after": self.nonzero_after,
            "shapes-before": {k: list(v) for k, v in self.shapes_before.items()},
            "shapes-after": {k: list(v) for k, v in self.shapes_after.items()},
            "fine-tune-loss": self.fine_tune_loss,
        }


def _census(model: nn.Module) -> tuple[int, int, dict]:
    """What a pruning result compares before and after: parameters, non-zero weights, layer shapes."""
    return count_parameters(model), count_nonzero(model), layer_shapes(model)


def _result(pruned: nn.Module, kind: str, amount: float, before: tuple, loss: float | None) -> PruningResult:
    pruned.eval()
    parameters, nonzero, shapes = _census(pruned)
    return PruningResult(
        model=pruned,
        kind=kind,
        amount=amount,
        sparsity=sparsity_of(pruned),
        parameters_before=before[0],
        parameters_after=parameters,
        nonzero_before=before[1],
        nonzero_after=nonzero,
        shapes_before=before[2],
        shapes_after=shapes,
        fine_tune_loss=loss,
    )


def prune_unstructured(model: nn.Module, *, sparsity: float, fine_tune: FineTune | None = None) -> PruningResult:
    """Zero the ``sparsity`` fraction of smallest-magnitude weights, ranked across all conv and linear layers.

    The masks stay in place during the fine-tune (the pruned weights stay zero), then are made permanent. The
    caller's model is not modified.
    """
    sparsity = check_amount(sparsity)
    pruned = copy.deepcopy(model).eval()
    before = _census(pruned)
    targets = [(m, "weight") for m in pruned.modules() if isinstance(m, PRUNABLE)]
    if not targets:
        raise PruningError("the model has no convolution or linear layer to prune")
    loss = None
    if sparsity > 0:
        prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=sparsity)
        if fine_tune is not None:
            loss = fine_tune.run(pruned)
        for module, name in targets:
            prune.remove(module, name)
    elif fine_tune is not None:
        loss = fine_tune.run(pruned)
    return _result(pruned, "unstructured", sparsity, before, loss)


# ------------------------------------------------------------------------------------------- channel pruning


@dataclass
class _ChannelGroup:
    """One producer layer, the per-channel layers after it and the layers that read its channels."""

    producer: str
    norms: list[str] = field(default_factory=list)
    consumers: list[tuple[str, bool]] = field(default_factory=list)  # (module name, reads it flattened)


def _is_flatten(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        module = modules[str(node.target)]
        return isinstance(module, nn.Flatten) and module.start_dim == 1 and module.end_dim == -1
    if node.op == "call_function" and node.target is torch.flatten:
        return node.args[1:2] == (1,) or node.kwargs.get("start_dim") == 1
    if node.op == "call_method" and node.target == "flatten":
        return node.args[1:2] == (1,) or node.kwargs.get("start_dim") == 1
    return False


def _trace_group(
    node: fx.Node, modules: dict[str, nn.Module], blocked: dict[str, str] | None = None
) -> _ChannelGroup | None:
    """Follow the channels of ``node``'s output to the layers that read them; None if they reach anything else
    (then ``blocked[layer]`` says what stopped them)."""
    group = _ChannelGroup(str(node.target))
    producer = modules[group.producer]
    stack: list[tuple[fx.Node, bool]] = [(user, False) for user in node.users]
    seen: set[fx.Node] = set()
    while stack:
        user, flattened = stack.pop()
        if user in seen:
            continue
        seen.add(user)
        if user.op == "call_module":
            module = modules[str(user.target)]
            if isinstance(module, _PASS_THROUGH_MODULES):
                stack.extend((u, flattened) for u in user.users)
                continue
            if isinstance(module, _PER_CHANNEL_MODULES) and not flattened:
                group.norms.append(str(user.target))
                stack.extend((u, flattened) for u in user.users)
                continue
            if _is_flatten(user, modules) and not flattened and isinstance(producer, CONVOLUTIONS):
                stack.extend((u, True) for u in user.users)
                continue
            if (
                isinstance(module, CONVOLUTIONS)
                and type(module) is type(producer)
                and module.groups == 1
                and not flattened
            ):
                group.consumers.append((str(user.target), False))
                continue
            if isinstance(module, nn.Linear) and (flattened or isinstance(producer, nn.Linear)):
                group.consumers.append((str(user.target), flattened))
                continue
            if blocked is not None:
                blocked[group.producer] = f"its output feeds {user.target} ({type(module).__name__})"
            return None
        if user.op == "call_function" and user.target in _PASS_THROUGH_FUNCTIONS and user.args[0] is not None:
            stack.extend((u, flattened) for u in user.users)
            continue
        if _is_flatten(user, modules) and not flattened and isinstance(producer, CONVOLUTIONS):
            stack.extend((u, True) for u in user.users)
            continue
        if blocked is not None:  # the graph output (the classifier's logits), an addition, a concatenation, ...
            target = getattr(user.target, "__name__", user.target)
            blocked[group.producer] = (
                "it gives the model's output" if user.op == "output" else f"its output feeds {target}"
            )
        return None
    return group if group.consumers else None


def _channel_groups(model: nn.Module, blocked: dict[str, str] | None = None) -> list[_ChannelGroup]:
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as e:  # fx raises many kinds for data-dependent control flow
        raise PruningError(
            f"channel pruning needs a model torch.fx can trace ({type(model).__name__} cannot: {e}); "
            "use unstructured pruning instead"
        ) from e
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    groups = []
    for node in graph.nodes:
        if node.op != "call_module" or calls[str(node.target)] != 1:
            continue
        module = modules[str(node.target)]
        if isinstance(module, nn.Linear) or (isinstance(module, CONVOLUTIONS) and module.groups == 1):
            group = _trace_group(node, modules, blocked)
            if group is not None and all(calls[name] == 1 for name, _ in group.consumers):
                groups.append(group)
            elif group is not None and blocked is not None:
                blocked[group.producer] = "a layer that reads it is called more than once"
        elif blocked is not None and isinstance(module, (*CONVOLUTIONS, nn.Linear)):
            blocked[str(node.target)] = f"it is a grouped convolution (groups={module.groups})"
    return groups


def _keep_indices(weight: torch.Tensor, amount: float, groups: int) -> torch.Tensor:
    """Channels to keep: the largest L1 norms, the same number from each normalisation group."""
    importance = weight.detach().abs().reshape(weight.shape[0], -1).sum(dim=1)
    channels = weight.shape[0]
    per_group = channels // groups
    keep_per_group = max(1, int(round(per_group * (1.0 - amount))))
    kept = []
    for g in range(groups):
        block = importance[g * per_group : (g + 1) * per_group]
        top = torch.topk(block, keep_per_group).indices + g * per_group
        kept.append(torch.sort(top).values)
    return torch.cat(kept)


def _conv_like(layer: nn.Module, in_channels: int, out_channels: int) -> nn.Module:
    """A new convolution of ``layer``'s kind (1-D, 2-D, 3-D) with its geometry and other channel counts."""
    return type(layer)(
        in_channels,
        out_channels,
        layer.kernel_size,
        stride=layer.stride,
        padding=layer.padding,
        dilation=layer.dilation,
        bias=layer.bias is not None,
        padding_mode=layer.padding_mode,
    )


def _shrink_out(layer: nn.Module, keep: torch.Tensor) -> nn.Module:
    n = len(keep)
    if isinstance(layer, CONVOLUTIONS):
        new: nn.Module = _conv_like(layer, layer.in_channels, n)
    else:
        new = nn.Linear(layer.in_features, n, bias=layer.bias is not None)
    with torch.no_grad():
        new.weight.copy_(layer.weight[keep])
        if layer.bias is not None:
            new.bias.copy_(layer.bias[keep])
    return new


def _shrink_norm(norm: nn.Module, keep: torch.Tensor) -> nn.Module:
    n = len(keep)
    if isinstance(norm, nn.GroupNorm):
        new: nn.Module = nn.GroupNorm(norm.num_groups, n, eps=norm.eps, affine=norm.affine)
    else:
        new = type(norm)(
            n, eps=norm.eps, momentum=norm.momentum, affine=norm.affine, track_running_stats=norm.track_running_stats
        )
    with torch.no_grad():
        for attr in ("weight", "bias", "running_mean", "running_var"):
            old = getattr(norm, attr, None)
            if old is not None and getattr(new, attr, None) is not None:
                getattr(new, attr).copy_(old[keep])
    return new


def _shrink_in(layer: nn.Module, keep: torch.Tensor, *, flattened: bool, channels: int) -> nn.Module:
    if isinstance(layer, CONVOLUTIONS):
        new: nn.Module = _conv_like(layer, len(keep), layer.out_channels)
        columns = keep
    else:
        if flattened:
            if layer.in_features % channels:
                raise PruningError(
                    f"a linear layer reads {layer.in_features} flattened values, not a multiple of the {channels} "
                    "channels before it; cannot tell which inputs belong to which channel"
                )
            spatial = layer.in_features // channels
            columns = (keep[:, None] * spatial + torch.arange(spatial)[None, :]).reshape(-1)
        else:
            columns = keep
        new = nn.Linear(len(columns), layer.out_features, bias=layer.bias is not None)
    with torch.no_grad():
        new.weight.copy_(layer.weight[:, columns])
        if layer.bias is not None:
            new.bias.copy_(layer.bias)
    return new


def prune_channels(model: nn.Module, *, amount: float, fine_tune: FineTune | None = None) -> PruningResult:
    """Remove the ``amount`` fraction of output channels with the smallest L1 norm from every layer that can lose them.

    A layer can lose channels when everything that reads its output is a convolution or linear layer (possibly
    through activations, pooling, normalisation and a flatten); the classifier's last layer keeps its outputs.
    Layers are rebuilt smaller, with the kept weights copied over. Under a GroupNorm the same number of channels
    is kept in each group. The caller's model is not modified.
    """
    amount = check_amount(amount, "the channel pruning amount")
    pruned = copy.deepcopy(model).eval()
    before = _census(pruned)
    blocked: dict[str, str] = {}
    groups = _channel_groups(pruned, blocked)
    if not groups:
        why = (
            "; ".join(f"{layer}: {reason}" for layer, reason in blocked.items())
            or "it has no convolution or linear layer"
        )
        raise PruningError(
            f"{type(model).__name__} has no layer whose output channels can be removed ({why}); each layer's output "
            "must feed only convolution or linear layers of its kind; use unstructured pruning instead (-V pruned-int8)"
        )
    if amount > 0:
        for group in groups:
            producer = pruned.get_submodule(group.producer)
            channels = producer.weight.shape[0]
            norm_groups = [
                pruned.get_submodule(n).num_groups
                for n in group.norms
                if isinstance(pruned.get_submodule(n), nn.GroupNorm)
            ]
            keep = _keep_indices(producer.weight, amount, math.lcm(*norm_groups) if norm_groups else 1)
            pruned.set_submodule(group.producer, _shrink_out(producer, keep))
            for name in group.norms:
                pruned.set_submodule(name, _shrink_norm(pruned.get_submodule(name), keep))
            for name, flattened in group.consumers:
                consumer = pruned.get_submodule(name)
                pruned.set_submodule(name, _shrink_in(consumer, keep, flattened=flattened, channels=channels))
    loss = fine_tune.run(pruned) if fine_tune is not None else None
    return _result(pruned, "channels", amount, before, loss)


__all__ = [
    "FineTune",
    "PruningResult",
    "check_amount",
    "count_nonzero",
    "layer_shapes",
    "prune_channels",
    "prune_unstructured",
    "sparsity_of",
]

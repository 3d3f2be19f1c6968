"""Ghost clipping in one backward pass ("book-keeping", Bu et al. 2023), under Opacus's DP optimizer.

Opacus's ghost clipping runs two backward passes: one to get every example's gradient norm, a second on the
loss re-weighted by the clipping factors. Both passes also compute the weight gradients. Here one backward pass
asks autograd only for the gradients of the layers' *outputs* (no weight gradients at all); each layer's
activations and output gradients then give

- Linear: the per-example norms without per-example gradients (``|g_n|^2 |a_n|^2`` for 2-D inputs, the Gram-matrix
  form or per-example gradients for sequences, whichever is cheaper), and the clipped sum as one matrix product of
  the re-weighted output gradients with the activations;
- Conv1d/Conv2d (ungrouped): per-example gradients from the unfolded input (what Opacus does for convolutions in
  ghost mode too), their norms, and the clipped sum as their weighted sum;
- GroupNorm / LayerNorm (elementwise affine): per-example gradients of scale and shift (one value per channel).

The clipped sum ``sum_n min(1, C / (|g_n| + 1e-6)) g_n`` is put in ``p.grad``; from there Opacus's
``DPOptimizerFastGradientClipping`` adds the noise, scales by the expected batch size and steps the accountant,
exactly as after Opacus's own ghost clipping. Same clipping factor formula, same noise, same accounting: the
guarantee is the one of Opacus's ghost (and hooks) mode; tests/client/test_bk_clipping.py proves the update equal
to hooks mode's on a fixed seed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from opacus.utils.tensor_utils import unfold2d
from torch import nn

#: Layer types whose per-example norms and clipped sums this module computes.
SUPPORTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.GroupNorm, nn.LayerNorm)


def unsupported_layers(model: nn.Module) -> list[str]:
    """``name (Type)`` of every layer with trainable parameters of its own that book-keeping cannot clip."""
    found = []
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        if not isinstance(module, SUPPORTED) or type(module) not in SUPPORTED:
            found.append(f"{name or '(the model)'} ({type(module).__name__})")
        elif isinstance(module, nn.Conv1d | nn.Conv2d) and (module.groups != 1 or isinstance(module.padding, str)):
            found.append(f"{name} ({type(module).__name__} with groups or string padding)")
        elif isinstance(module, nn.LayerNorm) and len(module.normalized_shape) != 1:
            found.append(f"{name} (LayerNorm over more than one dimension)")
    return found


class BookKeeping:
    """Hooks on a model's trainable layers that record each forward pass's activations and outputs, and the
    one-backward-pass computation of the clipped gradient sum from them."""

    def __init__(self, model: nn.Module, *, max_grad_norm: float) -> None:
        self.max_grad_norm = max_grad_norm
        self.layers = [
            m
            for m in model.modules()
            if isinstance(m, SUPPORTED) and any(p.requires_grad for p in m.parameters(recurse=False))
        ]
        self.records: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []
        self.handles = [m.register_forward_hook(self._record) for m in self.layers]
        self.per_sample_norms: torch.Tensor | None = None
        """The last batch's per-example gradient norms (not private: for tests and debugging only)."""

    def _record(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if module.training and torch.is_grad_enabled() and output.requires_grad:
            if any(m is module for m, _, _ in self.records):
                raise NotImplementedError(
                    f"{type(module).__name__} runs twice in one forward pass; book-keeping clipping takes one "
                    "norm per layer call: use dp-mode hooks for such a model"
                )
            self.records.append((module, inputs[0].detach(), output))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def clipped_backward(self, loss_per_sample: torch.Tensor, extra: torch.Tensor | None = None) -> None:
        """Put ``sum_n c_n grad(loss_n)`` into every trainable parameter's ``.grad`` (plus ``sum_n c_n`` times the
        gradient of ``extra``, a batch-independent term such as FedProx's, as Opacus's ghost loss does)."""
        records, self.records = self.records, []
        outputs = [out for _, _, out in records]
        output_grads = torch.autograd.grad(loss_per_sample.sum(), outputs)
        per_layer = [_norms_and_sums(m, a, g) for (m, a, _), g in zip(records, output_grads, strict=True)]
        squared = torch.stack([sq for sq, _ in per_layer]).sum(dim=0)
        norms = squared.sqrt()
        self.per_sample_norms = norms
        coef = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
        for _, clipped_sum in per_layer:
            for param, grad in clipped_sum(coef).items():
                param.grad = grad if param.grad is None else param.grad + grad
        if extra is not None:
            params = [p for m in self.layers for p in m.parameters(recurse=False) if p.requires_grad]
            for param, grad in zip(params, torch.autograd.grad(extra, params, allow_unused=True), strict=True):
                if grad is not None:
                    scaled = coef.sum() * grad
                    param.grad = scaled if param.grad is None else param.grad + scaled


NormsAndSums = tuple[torch.Tensor, Callable[[torch.Tensor], dict[nn.Parameter, torch.Tensor]]]


def _norms_and_sums(module: nn.Module, a: torch.Tensor, g: torch.Tensor) -> NormsAndSums:
    """(per-example squared gradient norm of the layer's parameters, coef -> {param: clipped sum})."""
    if isinstance(module, nn.Linear):
        return _linear(module, a, g)
    if isinstance(module, nn.Conv1d | nn.Conv2d):
        return _conv(module, a, g)
    return _norm_layer(module, a, g)


def _linear(module: nn.Linear, a: torch.Tensor, g: torch.Tensor) -> NormsAndSums:
    n = a.shape[0]
    a, g = a.reshape(n, -1, a.shape[-1]), g.reshape(n, -1, g.shape[-1])  # (n, T, d), (n, T, k)
    steps = a.shape[1]
    per_example: torch.Tensor | None = None
    if steps == 1:
        squared = (g.square().sum(dim=(1, 2))) * (a.square().sum(dim=(1, 2)))
    elif steps * steps * (a.shape[-1] + g.shape[-1]) < steps * a.shape[-1] * g.shape[-1]:
        squared = (torch.bmm(g, g.transpose(1, 2)) * torch.bmm(a, a.transpose(1, 2))).sum(dim=(1, 2)).clamp(min=0)
    else:
        per_example = torch.bmm(g.transpose(1, 2), a)  # (n, k, d)
        squared = torch.linalg.vector_norm(per_example.flatten(1), dim=1).square()
    bias_per_example = g.sum(dim=1)  # (n, k)
    if module.bias is not None and module.bias.requires_grad:
        squared = squared + bias_per_example.square().sum(dim=1)

    def clipped_sum(coef: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
        out = {}
        if module.weight.requires_grad:
            if per_example is not None:
                out[module.weight] = torch.einsum("n,nkd->kd", coef, per_example)
            else:
                weighted = (g * coef.view(n, 1, 1)).reshape(-1, g.shape[-1])
                out[module.weight] = weighted.t() @ a.reshape(-1, a.shape[-1])
        if module.bias is not None and module.bias.requires_grad:
            out[module.bias] = coef @ bias_per_example
        return out

    return squared, clipped_sum


def _conv(module: nn.Conv1d | nn.Conv2d, a: torch.Tensor, g: torch.Tensor) -> NormsAndSums:
    n = a.shape[0]
    if isinstance(module, nn.Conv1d):
        a, kernel = a.unsqueeze(2), (1, module.kernel_size[0])
        padding, stride, dilation = (0, module.padding[0]), (1, module.stride[0]), (1, module.dilation[0])
    else:
        kernel, padding, stride, dilation = module.kernel_size, module.padding, module.stride, module.dilation
    # Opacus's strided unfold: a copy of a strided view, far faster on the CPU than F.unfold's im2col
    unfolded = unfold2d(a, kernel_size=kernel, padding=padding, stride=stride, dilation=dilation)  # (n, C_in*k, L)
    g = g.reshape(n, g.shape[1], -1)  # (n, C_out, L)
    per_example = torch.bmm(g, unfolded.transpose(1, 2))  # (n, C_out, C_in*k)
    squared = torch.linalg.vector_norm(per_example.flatten(1), dim=1).square()
    bias_per_example = g.sum(dim=2)
    if module.bias is not None and module.bias.requires_grad:
        squared = squared + bias_per_example.square().sum(dim=1)

    def clipped_sum(coef: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
        out = {}
        if module.weight.requires_grad:
            out[module.weight] = torch.einsum("n,noi->oi", coef, per_example).view_as(module.weight)
        if module.bias is not None and module.bias.requires_grad:
            out[module.bias] = coef @ bias_per_example
        return out

    return squared, clipped_sum


def _norm_layer(module: nn.GroupNorm | nn.LayerNorm, a: torch.Tensor, g: torch.Tensor) -> NormsAndSums:
    n = a.shape[0]
    with torch.no_grad():
        if isinstance(module, nn.GroupNorm):
            normalized = F.group_norm(a, module.num_groups, eps=module.eps)
            weight_per_example = (normalized * g).reshape(n, a.shape[1], -1).sum(dim=2)  # (n, C)
            bias_per_example = g.reshape(n, g.shape[1], -1).sum(dim=2)
        else:
            normalized = F.layer_norm(a, module.normalized_shape, eps=module.eps)
            weight_per_example = (normalized * g).reshape(n, -1, a.shape[-1]).sum(dim=1)  # (n, d)
            bias_per_example = g.reshape(n, -1, g.shape[-1]).sum(dim=1)
    params = [(module.weight, weight_per_example), (module.bias, bias_per_example)]
    params = [(p, ge) for p, ge in params if p is not None and p.requires_grad]
    squared = sum((ge.square().sum(dim=1) for _, ge in params), torch.zeros(n, dtype=g.dtype, device=g.device))

    def clipped_sum(coef: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
        return {p: coef @ ge for p, ge in params}

    return squared, clipped_sum


class BookKeepingLoss:
    """The loss the training loop calls: per-example losses, whose ``backward()`` is the clipped backward pass.

    Behaves like Opacus's ghost-clipping loss for the loop: ``loss.backward()``, ``loss.detach()``, ``loss.item()``,
    and ``loss + term`` for a term that does not depend on the batch (FedProx)."""

    def __init__(self, clipping: BookKeeping, criterion: nn.Module) -> None:
        self.clipping = clipping
        self.criterion = criterion

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> _BookKeepingTensor:
        loss_per_sample = _per_sample(self.criterion, output, target)
        return _BookKeepingTensor(self.clipping, loss_per_sample, None)


def _per_sample(criterion: nn.Module, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if getattr(criterion, "reduction", None) is None:
        raise TypeError(
            f"{type(criterion).__name__} has no reduction to turn off; book-keeping needs per-example losses"
        )
    reduction = criterion.reduction
    criterion.reduction = "none"
    try:
        loss = criterion(output, target)
    finally:
        criterion.reduction = reduction
    return loss.reshape(loss.shape[0], -1).sum(dim=1) if loss.dim() > 1 else loss


class _BookKeepingTensor:
    def __init__(self, clipping: BookKeeping, loss_per_sample: torch.Tensor, extra: torch.Tensor | None) -> None:
        self.clipping = clipping
        self.loss_per_sample = loss_per_sample
        self.extra = extra

    def detach(self) -> torch.Tensor:
        mean = self.loss_per_sample.mean().detach()
        return mean if self.extra is None else mean + self.extra.detach()

    def item(self) -> float:
        return float(self.detach())

    def __add__(self, other: torch.Tensor) -> _BookKeepingTensor:
        if not isinstance(other, torch.Tensor) or other.dim() != 0:
            raise TypeError("only a scalar tensor (a term independent of the batch) can be added to the DP loss")
        return _BookKeepingTensor(
            self.clipping, self.loss_per_sample, other if self.extra is None else self.extra + other
        )

    def backward(self) -> None:
        self.clipping.clipped_backward(self.loss_per_sample, self.extra)

"""Train and test loops shared by the client, the server's central evaluation and the benchmarks.

They know nothing of Flower or Opacus: a DP-SGD optimizer and Opacus's loss wrapper are drop-in replacements for
the plain ones, so the same loop serves private and non-private training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from shared_models.data import ArrayDataset


@dataclass(frozen=True)
class EvalResult:
    loss: float
    accuracy: float
    num_examples: int


def train_epochs(
    model: nn.Module,
    loader: DataLoader,
    *,
    optimizer: torch.optim.Optimizer,
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    epochs: int,
    device: torch.device | str = "cpu",
    proximal_mu: float = 0.0,
) -> tuple[float, int]:
    """Run ``epochs`` passes over ``loader``; return (mean training loss, optimizer steps taken).

    ``proximal_mu`` > 0 adds FedProx's proximal term mu/2 * ||w - w_global||^2 against the weights at entry.
    Empty batches (possible under Poisson sampling) still take an optimizer step, so a DP optimizer adds its
    noise exactly as the accountant assumes.
    """
    model.train()
    global_params = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else []
    total_loss, total_seen, steps = 0.0, 0, 0
    for _ in range(epochs):
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad(set_to_none=True)
            if len(y) == 0:
                optimizer.step()
                steps += 1
                continue
            loss = criterion(model(x), y)
            if proximal_mu > 0:
                prox = sum(((p - g) ** 2).sum() for p, g in zip(model.parameters(), global_params, strict=True))
                loss = loss + (proximal_mu / 2.0) * prox
            loss.backward()
            optimizer.step()
            steps += 1
            total_loss += float(loss.detach()) * len(y)
            total_seen += len(y)
    return (total_loss / total_seen if total_seen else float("nan")), steps


@torch.no_grad()
def evaluate(
    model: nn.Module, data: ArrayDataset, *, batch_size: int = 512, device: torch.device | str = "cpu"
) -> EvalResult:
    """Mean cross-entropy and accuracy of ``model`` on ``data``."""
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    loss, correct = 0.0, 0
    for x, y in data.loader(batch_size):
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss += float(criterion(logits, y))
        correct += int((logits.argmax(dim=1) == y).sum())
    n = len(data)
    return EvalResult(loss=loss / n, accuracy=correct / n, num_examples=n)


def predict(model: nn.Module, x: np.ndarray, *, batch_size: int = 512) -> np.ndarray:
    """Logits for ``x`` as a NumPy array (CPU)."""
    model.eval()
    outs = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            outs.append(model(torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size]))).numpy())
    return np.concatenate(outs)

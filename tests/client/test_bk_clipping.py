"""dp-mode bk (ghost clipping in one backward pass) gives the update Opacus's reference mode (hooks) gives: same
per-example norms, same clipped sum, same noised step on a fixed seed."""

import copy
import warnings

import pytest
import torch
from opacus.accountants import RDPAccountant
from torch import nn

from client.config import PrivacyConfig
from client.privacy import RoundPlan, choose_grad_sample_mode, make_private
from shared_models.models import build_model

warnings.filterwarnings("ignore", message="Secure RNG turned off")
warnings.filterwarnings("ignore", message="Full backward hook is firing")


class SmallCnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.GroupNorm(2, 4),
            nn.Tanh(),
            nn.Conv2d(4, 6, 3, stride=2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(6 * 3 * 3, 12),
            nn.Tanh(),
            nn.Linear(12, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class SequenceModel(nn.Module):
    """Linear layers on (batch, time, features) inputs, LayerNorm and a Conv1d: the 3-D paths."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 5, 3, padding=1)
        self.proj = nn.Linear(5, 16)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x).transpose(1, 2)  # (n, T, 5)
        h = torch.tanh(self.norm(self.proj(h)))
        return self.head(h).mean(dim=1)


def _batch(kind: str, n: int = 9):
    g = torch.Generator().manual_seed(1)
    if kind == "cnn":
        return SmallCnn, torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)
    return SequenceModel, torch.randn(n, 3, 7, generator=g), torch.randint(0, 4, (n,), generator=g)


def _one_step(mode: str, kind: str, *, noise: float, max_grad_norm: float, prox: bool = False):
    factory, x, y = _batch(kind)
    torch.manual_seed(0)
    model = factory()
    start = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=len(y))
    plan = RoundPlan(noise_multiplier=noise, sample_rate=0.25, steps=1, epsilon_after=0.0)
    config = PrivacyConfig(max_grad_norm=max_grad_norm, grad_sample_mode=mode)
    dp_model, dp_optimizer, _, criterion = make_private(
        model, optimizer, loader, nn.CrossEntropyLoss(), plan=plan, config=config, accountant=RDPAccountant()
    )
    dp_optimizer.zero_grad()
    loss = criterion(dp_model(x), y)
    if prox:
        loss = loss + 0.3 * sum(((p - s) ** 2).sum() + p.sum() for p, s in zip(model.parameters(), start, strict=True))
    loss.backward()
    if mode == "hooks":
        per_param = [p.grad_sample.reshape(len(y), -1).norm(dim=1) for p in model.parameters()]
        norms = torch.stack(per_param).norm(dim=0)
    elif mode == "bk":
        norms = criterion.clipping.per_sample_norms
    else:
        norms = dp_model.per_sample_gradient_norms
    torch.manual_seed(123)
    dp_optimizer.step()
    update = [(s - p.detach()) for p, s in zip(model.parameters(), start, strict=True)]
    return norms.detach(), update


@pytest.mark.parametrize("kind", ["cnn", "sequence"])
@pytest.mark.parametrize("max_grad_norm", [0.05, 100.0])
def test_bk_clipped_sum_equals_hooks_mode(kind, max_grad_norm):
    """No noise: per-example norms and the clipped, averaged gradient are those of per-sample hooks, whether
    most examples are clipped (C = 0.05) or none (C = 100)."""
    norms_ref, update_ref = _one_step("hooks", kind, noise=0.0, max_grad_norm=max_grad_norm)
    norms_bk, update_bk = _one_step("bk", kind, noise=0.0, max_grad_norm=max_grad_norm)
    torch.testing.assert_close(norms_bk, norms_ref, rtol=1e-4, atol=1e-6)
    for a, b in zip(update_bk, update_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert any(float(u.abs().sum()) > 0 for u in update_bk)


@pytest.mark.parametrize("kind", ["cnn", "sequence"])
def test_bk_noised_update_equals_hooks_mode_on_a_fixed_seed(kind):
    """With noise (σ = 1.3) and the same seed, the step taken is the same: same noise on the same clipped sum."""
    _, update_ref = _one_step("hooks", kind, noise=1.3, max_grad_norm=0.5)
    _, update_bk = _one_step("bk", kind, noise=1.3, max_grad_norm=0.5)
    _, update_other_seed = _one_step("bk", kind, noise=0.0, max_grad_norm=0.5)
    for a, b in zip(update_bk, update_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert any(not torch.allclose(a, b) for a, b in zip(update_bk, update_other_seed, strict=True))


def test_bk_with_a_proximal_term_equals_opacus_ghost_clipping():
    """FedProx adds a batch-independent term to the loss: the step is Opacus's ghost clipping's for the same sum."""
    _, update_ref = _one_step("ghost", "cnn", noise=0.0, max_grad_norm=0.5, prox=True)
    _, update_bk = _one_step("bk", "cnn", noise=0.0, max_grad_norm=0.5, prox=True)
    for a, b in zip(update_bk, update_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_bk_is_kept_for_the_mnist_cnn_and_falls_back_where_it_cannot_clip():
    mnist = build_model("mnist-cnn", input_shape=(1, 28, 28), num_classes=10, seed=0)
    assert choose_grad_sample_mode(mnist, "bk") == ("bk", "")
    embedding = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(8, 2))
    mode, note = choose_grad_sample_mode(copy.deepcopy(embedding), "bk")
    assert mode == "ghost" and "Embedding" in note

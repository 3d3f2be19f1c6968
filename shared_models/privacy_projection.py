"""ε from a DP-SGD history, and ε after one more round: the server's projection of what a client can afford.

A client's accountant (Opacus's RDP accountant, ``client/privacy.py``) is the authority on what it has spent; it
reports its history, a list of ``(noise multiplier σ, sampling rate q, steps)``, with every reply. The server uses
the same RDP arithmetic (Opacus's ``compute_rdp`` / ``get_privacy_spent`` over the accountant's default orders) to
project a client's ε after one more round like its last, and asks only the clients that can afford it.

Opacus is imported when a number is asked for, not when this module is: reading a run record needs no Opacus.

>>> round(epsilon_of([(1.1, 0.01, 200)], delta=1e-5), 3)
1.058
>>> projected_epsilon([(1.1, 0.01, 200)], delta=1e-5) == epsilon_of([(1.1, 0.01, 400)], delta=1e-5)
True
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache

#: The accountant whose arithmetic these numbers follow; recorded in privacy.json as ``accountant``.
ACCOUNTANT = "rdp"

Step = tuple[float, float, int]
"""One entry of an accountant's history: (noise multiplier σ, sampling rate q, steps)."""


def merged_history(history: Iterable[Sequence[float]]) -> tuple[Step, ...]:
    """``history`` with consecutive entries of the same σ and q added up (RDP composes linearly in steps).

    >>> merged_history([(1.0, 0.1, 5), (1.0, 0.1, 5), (2.0, 0.1, 1)])
    ((1.0, 0.1, 10), (2.0, 0.1, 1))
    """
    out: list[Step] = []
    for sigma, rate, steps in history:
        if out and out[-1][0] == float(sigma) and out[-1][1] == float(rate):
            out[-1] = (out[-1][0], out[-1][1], out[-1][2] + int(steps))
        else:
            out.append((float(sigma), float(rate), int(steps)))
    return tuple(out)


@lru_cache(maxsize=4096)
def _epsilon(history: tuple[Step, ...], delta: float) -> float:
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    if not history:
        return 0.0
    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = sum(compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=orders) for sigma, q, steps in history)
    epsilon, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
    return float(epsilon)


def epsilon_of(history: Iterable[Sequence[float]], *, delta: float) -> float:
    """ε at ``delta`` after the DP-SGD steps of ``history`` (0 for none), as Opacus's RDP accountant computes it."""
    return _epsilon(merged_history(history), float(delta))


def projected_epsilon(
    history: Iterable[Sequence[float]], *, delta: float, next_round: Sequence[float] | None = None
) -> float:
    """ε after one more round of ``next_round`` = (σ, q, steps); by default one more of ``history``'s last entry (give
    a history of one entry per round, or ``next_round`` itself: a merged entry holds several rounds' steps)."""
    history = list(history)
    if next_round is None:
        if not history:
            return 0.0
        next_round = history[-1]
    return epsilon_of([*history, tuple(next_round)], delta=delta)

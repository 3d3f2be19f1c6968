"""The server's privacy ledger: per client, the ε it reports (cumulative over the run), the rounds it took, and the
DP-SGD numbers behind that ε, so anyone can recompute it.

The clients' accountants are the authority (each keeps its own RDP history); the ledger is the server's record
of what they reported, so a run's report can say who spent what, who refused because its budget was spent, and
whose training went into a round whose update was discarded (ε spent is ε spent: nothing is ever refunded).

From each client's reported history the ledger projects its ε after one more round
(:func:`shared_models.privacy_projection.projected_epsilon`), and the round loop asks only the clients that can
afford it.

privacy.json (:meth:`PrivacyLedger.state_dict`), per client under ``clients``: ``epsilon``, ``delta``,
``accountant`` (``rdp``), ``max-grad-norm``, ``noise-multiplier`` / ``sample-rate`` / ``steps-per-round`` (its last
round's σ, q and steps), ``steps`` (all DP-SGD steps of the run), ``accountant-history`` (the client's accountant:
``[σ, q, steps]`` entries, in order; ε is the RDP composition of exactly these), ``per-round`` (round, σ, q, steps,
ε after it, whether its update was discarded), ``projected-epsilon`` (ε after one more round like the last),
``rounds``, ``epsilons``, ``refused-rounds``, ``discarded-rounds``, ``last-refusal``, ``node-id``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from shared_models.privacy_projection import ACCOUNTANT, epsilon_of, merged_history, projected_epsilon

#: The relative slack in the server's favour of asking: a client whose projection is within it of the budget is
#: asked (its own accountant decides, and refuses if it really cannot afford the round).
PROJECTION_SLACK = 1e-6


@dataclass(frozen=True)
class DpRound:
    """What one round of DP-SGD on one client was: noise multiplier, sampling rate, steps, clipping norm."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float | None = None

    @classmethod
    def from_metrics(cls, metrics: Any) -> DpRound | None:
        """From a train reply's MetricRecord (``noise-multiplier``, ``sample-rate``, ``dp-steps``,
        ``max-grad-norm``), or None where the client did not train with DP."""
        if metrics is None or "noise-multiplier" not in metrics or "dp-steps" not in metrics:
            return None
        norm = metrics.get("max-grad-norm")
        return cls(
            float(metrics["noise-multiplier"]),
            float(metrics["sample-rate"]),
            int(metrics["dp-steps"]),
            None if norm is None else float(norm),
        )


def parse_history(text: str | None) -> list[tuple[float, float, int]] | None:
    """A client's reported accountant history (JSON ``[[σ, q, steps], ...]``), or None if it sent none."""
    if not text:
        return None
    try:
        return [(float(s), float(q), int(n)) for s, q, n in json.loads(text)]
    except (ValueError, TypeError):
        return None


@dataclass
class ClientPrivacy:
    epsilon: float = 0.0
    rounds: list[int] = field(default_factory=list)
    epsilons: list[float] = field(default_factory=list)
    """The ε reported after each round in ``rounds`` (cumulative): it only grows while the accountant is intact."""
    refused_rounds: list[int] = field(default_factory=list)
    last_refusal: str = ""
    discarded_rounds: list[int] = field(default_factory=list)
    """Rounds this client trained in (and spent ε on) whose update the server then discarded (too few replies)."""
    node_id: int | None = None
    per_round: list[dict[str, Any]] = field(default_factory=list)
    history: list[tuple[float, float, int]] = field(default_factory=list)
    """The client's accountant as it last reported it: (σ, q, steps) entries."""
    max_grad_norm: float | None = None

    @property
    def last_round(self) -> dict[str, Any] | None:
        return next((r for r in reversed(self.per_round) if r.get("noise-multiplier") is not None), None)

    def projected_epsilon(self, delta: float) -> float | None:
        """ε after one more round like its last, or None where nothing is known of its DP rounds."""
        last = self.last_round
        if last is None or not self.history:
            return None
        return projected_epsilon(
            self.history, delta=delta, next_round=(last["noise-multiplier"], last["sample-rate"], last["steps"])
        )


@dataclass
class PrivacyLedger:
    target_epsilon: float
    delta: float
    enabled: bool = True
    clients: dict[str, ClientPrivacy] = field(default_factory=dict)

    def _client(self, client_id: str, node_id: int | None = None) -> ClientPrivacy:
        entry = self.clients.setdefault(client_id, ClientPrivacy())
        if node_id is not None:
            entry.node_id = int(node_id)
        return entry

    def record_training(
        self,
        client_id: str,
        server_round: int,
        epsilon: float | None,
        *,
        node_id: int | None = None,
        dp: DpRound | None = None,
        history: list[tuple[float, float, int]] | None = None,
    ) -> None:
        entry = self._client(client_id, node_id)
        entry.rounds.append(server_round)
        if epsilon is not None:
            entry.epsilons.append(float(epsilon))
            entry.epsilon = max(entry.epsilon, float(epsilon))
        if dp is not None:
            entry.per_round.append(
                {
                    "round": server_round,
                    "noise-multiplier": dp.noise_multiplier,
                    "sample-rate": dp.sample_rate,
                    "steps": dp.steps,
                    "epsilon": None if epsilon is None else float(epsilon),
                    "discarded": False,
                }
            )
            if dp.max_grad_norm is not None:
                entry.max_grad_norm = dp.max_grad_norm
            if history is None:  # an older client: the ledger's own record of its rounds stands in for it
                history = [*entry.history, (dp.noise_multiplier, dp.sample_rate, dp.steps)]
        if history is not None:
            entry.history = list(merged_history(history))

    def record_refusal(
        self,
        client_id: str,
        server_round: int,
        epsilon: float | None,
        reason: str,
        *,
        node_id: int | None = None,
        history: list[tuple[float, float, int]] | None = None,
    ) -> None:
        entry = self._client(client_id, node_id)
        entry.refused_rounds.append(server_round)
        entry.last_refusal = reason
        if epsilon is not None:
            entry.epsilon = max(entry.epsilon, float(epsilon))
        if history is not None:
            entry.history = list(merged_history(history))

    def record_discarded(self, client_ids: list[str], server_round: int) -> None:
        """These clients trained in ``server_round`` but its update was discarded: recorded, ε kept as spent."""
        for client_id in client_ids:
            entry = self._client(client_id)
            entry.discarded_rounds.append(server_round)
            for r in entry.per_round:
                if r["round"] == server_round:
                    r["discarded"] = True

    def can_afford(self, client_id: str) -> bool:
        """Whether ``client_id`` can afford one more round: by its projected ε where its DP rounds are known; a
        client that refused since it last trained cannot; an unknown client is asked (its accountant decides)."""
        if not self.enabled:
            return True
        entry = self.clients.get(client_id)
        if entry is None:
            return True
        projected = entry.projected_epsilon(self.delta)
        if projected is not None:
            return projected <= self.target_epsilon * (1 + PROJECTION_SLACK)
        if entry.refused_rounds and (not entry.rounds or entry.refused_rounds[-1] > entry.rounds[-1]):
            return False
        return True

    def unaffordable_nodes(self) -> dict[int, str]:
        """Node id -> client id of every client known not to afford another round."""
        return {c.node_id: cid for cid, c in self.clients.items() if c.node_id is not None and not self.can_afford(cid)}

    @property
    def max_epsilon(self) -> float:
        return max((c.epsilon for c in self.clients.values()), default=0.0)

    @property
    def mean_epsilon(self) -> float:
        return sum(c.epsilon for c in self.clients.values()) / len(self.clients) if self.clients else 0.0

    def _client_record(self, c: ClientPrivacy) -> dict[str, Any]:
        last = c.last_round
        return {
            "epsilon": c.epsilon,
            "delta": self.delta,
            "accountant": ACCOUNTANT,
            "max-grad-norm": c.max_grad_norm,
            "noise-multiplier": None if last is None else last["noise-multiplier"],
            "sample-rate": None if last is None else last["sample-rate"],
            "steps-per-round": None if last is None else last["steps"],
            "steps": sum(steps for _, _, steps in c.history),
            "accountant-history": [list(h) for h in c.history],
            "accountant-epsilon": epsilon_of(c.history, delta=self.delta) if c.history and self.enabled else None,
            "projected-epsilon": c.projected_epsilon(self.delta) if self.enabled else None,
            "per-round": c.per_round,
            "rounds": c.rounds,
            "epsilons": c.epsilons,
            "refused-rounds": c.refused_rounds,
            "discarded-rounds": c.discarded_rounds,
            "last-refusal": c.last_refusal,
            "node-id": c.node_id,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "target-epsilon": self.target_epsilon,
            "delta": self.delta,
            "accountant": ACCOUNTANT,
            "max-epsilon": self.max_epsilon,
            "clients": {
                cid: self._client_record(c) for cid, c in sorted(self.clients.items(), key=lambda kv: _sort_key(kv[0]))
            },
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> PrivacyLedger:
        ledger = cls(float(state["target-epsilon"]), float(state["delta"]), bool(state.get("enabled", True)))
        for cid, c in state.get("clients", {}).items():
            node_id = c.get("node-id")
            ledger.clients[cid] = ClientPrivacy(
                epsilon=float(c["epsilon"]),
                rounds=list(c["rounds"]),
                epsilons=[float(e) for e in c.get("epsilons", [])],
                refused_rounds=list(c["refused-rounds"]),
                last_refusal=str(c.get("last-refusal", "")),
                discarded_rounds=list(c.get("discarded-rounds", [])),
                node_id=None if node_id is None else int(node_id),
                per_round=[dict(r) for r in c.get("per-round", [])],
                history=[(float(s), float(q), int(n)) for s, q, n in c.get("accountant-history", [])],
                max_grad_norm=c.get("max-grad-norm"),
            )
        return ledger


def _sort_key(client_id: str) -> tuple[int, str]:
    return (0, f"{int(client_id):012d}") if client_id.isdigit() else (1, client_id)

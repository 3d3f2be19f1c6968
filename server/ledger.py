"""The server's privacy ledger: per client, the ε it reports (cumulative over the run) and the rounds it took.

The clients' accountants are the authority (each keeps its own RDP history); the ledger is the server's record
of what they reported, so a run's report can say who spent what, and who refused because its budget was spent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ClientPrivacy:
    epsilon: float = 0.0
    rounds: list[int] = field(default_factory=list)
    epsilons: list[float] = field(default_factory=list)
    """The ε reported after each round in ``rounds`` (cumulative): it only grows while the accountant is intact."""
    refused_rounds: list[int] = field(default_factory=list)
    last_refusal: str = ""


@dataclass
class PrivacyLedger:
    target_epsilon: float
    delta: float
    enabled: bool = True
    clients: dict[str, ClientPrivacy] = field(default_factory=dict)

    def _client(self, client_id: str) -> ClientPrivacy:
        return self.clients.setdefault(client_id, ClientPrivacy())

    def record_training(self, client_id: str, server_round: int, epsilon: float | None) -> None:
        entry = self._client(client_id)
        entry.rounds.append(server_round)
        if epsilon is not None:
            entry.epsilons.append(float(epsilon))
            entry.epsilon = max(entry.epsilon, float(epsilon))

    def record_refusal(self, client_id: str, server_round: int, epsilon: float | None, reason: str) -> None:
        entry = self._client(client_id)
        entry.refused_rounds.append(server_round)
        entry.last_refusal = reason
        if epsilon is not None:
            entry.epsilon = max(entry.epsilon, float(epsilon))

    @property
    def max_epsilon(self) -> float:
        return max((c.epsilon for c in self.clients.values()), default=0.0)

    @property
    def mean_epsilon(self) -> float:
        return sum(c.epsilon for c in self.clients.values()) / len(self.clients) if self.clients else 0.0

    def state_dict(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "target-epsilon": self.target_epsilon,
            "delta": self.delta,
            "max-epsilon": self.max_epsilon,
            "clients": {
                cid: {
                    "epsilon": c.epsilon,
                    "rounds": c.rounds,
                    "epsilons": c.epsilons,
                    "refused-rounds": c.refused_rounds,
                    "last-refusal": c.last_refusal,
                }
                for cid, c in sorted(self.clients.items(), key=lambda kv: _sort_key(kv[0]))
            },
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> PrivacyLedger:
        ledger = cls(float(state["target-epsilon"]), float(state["delta"]), bool(state.get("enabled", True)))
        for cid, c in state.get("clients", {}).items():
            ledger.clients[cid] = ClientPrivacy(
                epsilon=float(c["epsilon"]),
                rounds=list(c["rounds"]),
                epsilons=[float(e) for e in c.get("epsilons", [])],
                refused_rounds=list(c["refused-rounds"]),
                last_refusal=str(c.get("last-refusal", "")),
            )
        return ledger


def _sort_key(client_id: str) -> tuple[int, str]:
    return (0, f"{int(client_id):012d}") if client_id.isdigit() else (1, client_id)

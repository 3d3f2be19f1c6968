"""The round loop: Flower's strategy decides whom to ask and how to aggregate; this loop moves the messages.

It plays the part of ``Strategy.start`` (same calls: ``configure_train`` / ``aggregate_train`` /
``configure_evaluate`` / ``aggregate_evaluate``) with three differences that Flower's loop cannot give us:

- replies are pulled as they arrive, checked, entered in the privacy ledger, and, for strategies whose
  aggregation is a weighted mean, folded into a running sum at once, so the server holds one model's worth of
  arrays instead of one per client (at 1,000 clients that is most of the server's memory);
- a refusal (privacy budget spent) or a failed reply is logged and skipped, and the round goes on with the rest;
- real nodes die and straggle: a round waits at most ``round_timeout`` seconds, and once ``min_replies`` nodes have
  trained it waits at most ``straggler_timeout`` more for the rest; a node that did not answer is counted
  (``timed_out``) and skipped, and its message expires with the round so a node that comes back late does not
  train (and spend privacy budget on) a round that is over. A round with fewer than ``min_replies`` trained
  replies leaves the global model unchanged;
- a callback after every round (central evaluation, checkpoint, metrics, progress) and a first round other than 1
  (resume);
- budget-aware sampling: with DP, the strategy samples from the nodes whose clients can afford one more round
  (their projected ε, from the privacy ledger, within the budget); a round that cannot reach ``min_replies`` (or
  the strategy's own minimum of nodes) among them is not started and the run stops, its reason in ``stopped``.
  A round whose update is discarded (fewer than ``min_replies`` trained) is recorded as such in the ledger: its
  clients spent ε on it all the same;
- federated evaluation (per site: :mod:`server.sites`) every ``evaluate_every`` rounds and after the last.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from server.grid_view import GridView
from server.ledger import DpRound, PrivacyLedger, parse_history
from server.sites import site_metrics

#: After a pull of the SuperLink that brought no reply, the next waits this much longer, up to ``max_poll_interval``
#: (a reply, or a push, starts again from ``poll_interval``).
POLL_GROWTH = 1.5

log = logging.getLogger("fedge.server")
WEIGHT_KEY = "num-examples"


def array_values(array: Array) -> np.ndarray:
    """An Array's values as a read-only view on the bytes it arrived in, without ``Array.numpy()``'s copy.

    Flower stores an Array as the ``.npy`` file of its values: a header naming dtype, order and shape, then the raw
    values, which are the last ``size x itemsize`` bytes. Where the header names this Array's dtype in C order (what
    ``Array(ndarray)`` writes on this machine), the values are viewed in place; anything else (Fortran order, another
    byte order) goes through ``Array.numpy()``.

    >>> a = Array(np.arange(6, dtype=np.float32).reshape(2, 3))
    >>> array_values(a).tolist(), array_values(a).flags.writeable
    ([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]], False)
    """
    dtype = np.dtype(array.dtype)
    nbytes = int(np.prod(array.shape, dtype=np.int64)) * dtype.itemsize
    offset = len(array.data) - nbytes
    header = bytes(array.data[: max(0, offset)])  # bytes: `in` on a memoryview would compare single bytes
    if array.stype != "numpy.ndarray" or offset <= 0 or b"True" in header or f"'{dtype.str}'".encode() not in header:
        return array.numpy()
    return np.frombuffer(array.data, dtype=dtype, offset=offset).reshape(array.shape)


def owned_arrays(records: RecordDict) -> RecordDict:
    """``records`` (changed in place) with every array's ``data`` its own ``bytes``: fedge's simulation hands a reply's
    large arrays over as views of Ray's object store (``simulations/flower_ray_backend.py``), which a reply held to
    the end of the round, or a node's state kept for its next message, would keep pinned there."""
    for record in records.array_records.values():
        for key, array in list(record.items()):
            if not isinstance(array.data, bytes):
                own = bytes(array.data)
                record[key] = Array(dtype=array.dtype, shape=tuple(array.shape), stype=array.stype, data=own)
    return records


def _tensor_view(values: np.ndarray) -> torch.Tensor:
    """``values`` as a tensor on the same memory (read-only memory: it is only read), or a float64 copy for a dtype
    torch does not have."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "not writable": the tensor is only ever read
        try:
            return torch.from_numpy(values)
        except TypeError:
            return torch.from_numpy(np.asarray(values, dtype=np.float64))


class StreamingMean:
    """A weighted mean of ArrayRecords and MetricRecords, accumulated one reply at a time (in float64).

    float32 arrays (every model's weights here) are summed first in float32, over at most :attr:`BLOCK` replies, and
    each such block sum is then folded into the float64 sum: torch adds float32 to float32 ten times faster than it
    adds float32 into float64 (0.2 vs 2.3 ms for 1.66M values on this project's machine), and at 1,000 replies a round
    that difference is seconds of the driver's CPU, shared with the clients' training. A block's float32 rounding
    (at most ``BLOCK`` additions) stays far below the float32 the mean is returned in; Flower's own FedAvg sums every
    reply in float32. Arrays of any other dtype are summed in float64 directly.
    """

    BLOCK = 16

    def __init__(self) -> None:
        self.total_weight = 0.0
        self.count = 0
        self._arrays: dict[str, torch.Tensor] = {}
        self._block: dict[str, torch.Tensor] = {}
        self._in_block = 0
        self._metrics: dict[str, float] = {}

    def add(self, arrays: ArrayRecord, metrics: MetricRecord) -> None:
        weight = float(metrics[WEIGHT_KEY])
        for key, array in arrays.items():
            # the reply's values viewed in place (no copy of the reply), then sum += weight x values in one pass
            # (torch's add_ with alpha, no temporaries)
            values = _tensor_view(array_values(array))
            if values.dtype == torch.float32:
                if key in self._block:
                    self._block[key].add_(values, alpha=weight)
                else:  # a new tensor: the reply's own bytes are only read
                    self._block[key] = values.mul(weight)
            elif key in self._arrays:
                self._arrays[key].add_(values, alpha=weight)
            else:
                # a copy even where the values are float64 already: they are the reply's own (read-only) bytes
                self._arrays[key] = values.to(torch.float64, copy=True).mul_(weight)
        self._in_block += 1
        if self._in_block >= self.BLOCK:
            self._fold_block()
        for key, value in metrics.items():
            if key != WEIGHT_KEY and isinstance(value, int | float):
                self._metrics[key] = self._metrics.get(key, 0.0) + float(value) * weight
        self.total_weight += weight
        self.count += 1

    def _fold_block(self) -> None:
        for key, block in self._block.items():
            if key in self._arrays:
                self._arrays[key].add_(block)
            else:
                self._arrays[key] = block.to(torch.float64)
        self._block, self._in_block = {}, 0

    def as_reply_content(self, dtypes: dict[str, np.dtype]) -> RecordDict:
        """The mean as one reply's content: a mean-based strategy aggregating it alone returns it unchanged."""
        self._fold_block()
        w = self.total_weight
        arrays = ArrayRecord(
            {k: Array((v / w).numpy().astype(dtypes.get(k, np.float32))) for k, v in self._arrays.items()}
        )
        metrics = MetricRecord({k: v / w for k, v in self._metrics.items()})
        metrics[WEIGHT_KEY] = w
        return RecordDict({"arrays": arrays, "metrics": metrics})


@dataclass
class RoundOutcome:
    server_round: int
    arrays: ArrayRecord
    train_metrics: dict[str, float] = field(default_factory=dict)
    evaluate_metrics: dict[str, float] = field(default_factory=dict)
    replied: int = 0
    refused: int = 0
    failed: int = 0
    timed_out: int = 0
    sampled: int = 0
    seconds: float = 0.0
    failures: dict[str, str] = field(default_factory=dict)
    """Why each failed node failed (node id -> the reason in its error reply)."""
    trained_on: dict[str, int] = field(default_factory=dict)
    """How many trained replies came from each place (a Ray node in a simulation, a host on real nodes), as the
    clients report it (``trained-on`` in their ``client`` record)."""
    sites: dict[str, dict[str, float | int]] = field(default_factory=dict)
    """Per-site evaluation of the round's global model (site -> accuracy, loss, examples); empty when the round
    did not evaluate."""
    discarded: bool = False
    """Clients trained but fewer than ``min_replies`` did: their update was discarded (their ε stays spent)."""
    not_affordable: int = 0
    """Nodes left out of sampling because their clients cannot afford one more round."""


class _CountStreamedReplies(logging.Filter):
    """With streaming aggregation the strategy gets one reply, the running mean of all, so Flower's strategy logs
    "Received 1 results" while fedge reports "3/3 trained": this filter on Flower's logger puts the number of
    replies that went into the mean (and the failures) into that line, for the length of one aggregate call."""

    MESSAGE = "%s: Received %s results and %s failures"

    def __init__(self, replied: int, failed: int) -> None:
        super().__init__()
        self.replied, self.failed = replied, failed

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == self.MESSAGE and isinstance(record.args, tuple) and len(record.args) == 3:
            record.args = (record.args[0], self.replied, self.failed)
        return True


def _client_id(msg: Message) -> str:
    """The client's name in the ledger: a real node's ``node-name``, else its simulated partition, else its node id."""
    for key in ("node-name", "partition-id"):
        for record_name in ("client", "refusal"):
            record = msg.content.config_records.get(record_name)
            if record is not None and key in record:
                return str(record[key])
    return str(msg.metadata.src_node_id)


def _client_history(msg: Message, record_name: str) -> list[tuple[float, float, int]] | None:
    record = msg.content.config_records.get(record_name)
    return parse_history(str(record["dp-history"])) if record is not None and "dp-history" in record else None


class AffordableNodes(GridView):
    """A view of ``grid`` whose ``get_node_ids`` leaves out ``excluded`` nodes (clients that cannot afford one more
    round), so Flower's strategy samples among the others; every other call goes to ``grid``."""

    def __init__(self, grid: Grid, excluded: Iterable[int]) -> None:
        super().__init__(grid)
        self.excluded = frozenset(excluded)

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in self.grid.get_node_ids() if n not in self.excluded]


def _trained_on(msg: Message) -> str:
    record = msg.content.config_records.get("client")
    return str(record["trained-on"]) if record is not None and "trained-on" in record else "unknown"


class RoundLoop:
    """Drive ``strategy`` over ``grid`` for rounds ``first_round..num_rounds``."""

    def __init__(
        self,
        *,
        strategy: Strategy,
        grid: Grid,
        ledger: PrivacyLedger,
        stream: bool,
        round_timeout: float | None = None,
        min_replies: int = 0,
        straggler_timeout: float | None = None,
        poll_interval: float = 0.05,
        max_poll_interval: float = 0.25,
        max_in_flight: int = 0,
        evaluate_every: int = 1,
        budget_aware: bool = True,
    ) -> None:
        self.strategy = strategy
        self.grid = grid
        self.ledger = ledger
        self.stream = stream
        self.round_timeout = round_timeout
        self.min_replies = max(0, int(min_replies))
        self.straggler_timeout = straggler_timeout
        self.poll_interval = poll_interval
        self.max_poll_interval = max(poll_interval, max_poll_interval)
        """Replies pulled ``poll_interval`` after a push or a reply; each empty pull waits :data:`POLL_GROWTH` times
        longer, up to this. A deployed ServerApp's pulls are requests to the SuperLink: every 0.05 s through a
        round in which the nodes trained for seconds, they and the SuperLink's answers took CPU that the nodes and
        their transfers needed (``simulations/benchmarks/results/deployment.md``). Replies that stream in, as in a
        simulation of many clients, keep the pulls at ``poll_interval``."""
        self.max_in_flight = max(0, int(max_in_flight))
        self.evaluate_every = max(1, int(evaluate_every))
        self.budget_aware = budget_aware
        """Ask only clients that can afford the round (False: ask every node; each client's accountant refuses)."""
        self.unanswered = 0
        self.stopped: dict[str, object] | None = None
        """Why the run stopped before its last round (``round``, ``reason``), or None."""

    def _collect(self, messages: Iterable[Message], enough: Callable[[], bool] = lambda: False) -> Iterator[Message]:
        """Push, then pull replies as they come until all are in or the round's time is up.

        The time is up at ``round_timeout``, or ``straggler_timeout`` after ``enough()`` first holds. The number
        of nodes that never answered is left in ``self.unanswered``.
        """
        messages = list(messages)
        if self.round_timeout is not None:
            for msg in messages:
                msg.metadata.ttl = self.round_timeout  # expires with the round on the SuperLink
        # At most `max_in_flight` messages wait on the SuperLink at a time (0: all at once, as real nodes want).
        # Flower's simulation engine looks for each node's next message by scanning every stored message, once per
        # node, ten times a second: with 1,000 messages stored that scan is most of the driver's CPU.
        window = self.max_in_flight if self.max_in_flight > 0 else len(messages)
        queued = iter(messages)
        pending = set(self.grid.push_messages([m for _, m in zip(range(window), queued, strict=False)]))
        sent = len(pending)
        start = time.monotonic()
        deadline = None if self.round_timeout is None else start + self.round_timeout
        straggler_deadline = None
        wait = self.poll_interval
        while pending:
            now = time.monotonic()
            if straggler_deadline is None and self.straggler_timeout is not None and enough():
                straggler_deadline = now + self.straggler_timeout
            if (deadline is not None and now >= deadline) or (
                straggler_deadline is not None and now >= straggler_deadline
            ):
                break
            got = list(self.grid.pull_messages(pending))
            for reply in got:
                pending.discard(reply.metadata.reply_to_message_id)
            if got and sent < len(messages):  # top the window up before handling the replies
                more = [m for _, m in zip(range(window - len(pending)), queued, strict=False)]
                if more:
                    pushed = list(self.grid.push_messages(more))
                    pending.update(pushed)
                    sent += len(pushed)
            for reply in got:
                yield reply
            if got:
                wait = self.poll_interval
            else:
                time.sleep(wait)
                wait = min(wait * POLL_GROWTH, self.max_poll_interval)
        self.unanswered = len(pending) + (len(messages) - sent)
        if self.unanswered:
            why = "the round timeout" if straggler_deadline is None else "the straggler timeout"
            log.warning(
                "%d of %d nodes did not reply before %s; going on without them", self.unanswered, len(messages), why
            )

    def _strategy_minimum(self) -> tuple[int, str]:
        """The fewest nodes Flower's strategy samples from without waiting for more to connect, and its setting."""
        available = int(getattr(self.strategy, "min_available_nodes", 0) or 0)
        train = int(getattr(self.strategy, "min_train_nodes", 0) or 0)
        return (available, "min-available-nodes") if available >= train else (train, "min-train-nodes")

    def budget_stop(self, server_round: int) -> str | None:
        """Why round ``server_round`` cannot start among the clients that can afford it, or None if it can.

        Only clients known to be unable to afford another round are left out (an unknown client is asked: its own
        accountant decides), so before any client has run out this never stops a round.
        """
        excluded = self.ledger.unaffordable_nodes() if self.budget_aware else {}
        if not excluded:
            return None
        nodes = list(self.grid.get_node_ids())
        affordable = [n for n in nodes if n not in excluded]
        spent = ", ".join(sorted({excluded[n] for n in nodes if n in excluded}))
        needed = max(self.min_replies, 1)
        fewest, setting = self._strategy_minimum()
        if len(affordable) >= needed and len(affordable) >= fewest:
            return None
        if len(affordable) < needed:
            what, lower = f"fewer than min-replies={self.min_replies}", "min-replies"
        else:
            what, lower = f"fewer than the strategy's {setting}={fewest}", setting
        return (
            f"round {server_round} not started: only {len(affordable)} of {len(nodes)} clients can afford another "
            f"round within ε={self.ledger.target_epsilon:g} (δ={self.ledger.delta:g}), {what}; budget spent: "
            f"{spent}. Raise target-epsilon or the noise multiplier, plan fewer rounds, or lower {lower}"
        )

    def train_round(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, *, evaluate: bool = True
    ) -> RoundOutcome:
        start = time.monotonic()
        outcome = RoundOutcome(server_round, arrays)
        excluded = self.ledger.unaffordable_nodes() if self.budget_aware else {}
        outcome.not_affordable = len(excluded)
        if excluded:
            log.info(
                "round %d: not asking %d clients that cannot afford it (%s)",
                server_round,
                len(excluded),
                ", ".join(sorted(excluded.values())),
            )
        grid = AffordableNodes(self.grid, excluded) if excluded else self.grid
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        outcome.sampled = len(messages)
        dtypes = {k: np.dtype(a.dtype) for k, a in arrays.items()} if self.stream else {}
        mean = StreamingMean() if self.stream else None
        held: list[Message] = []
        trained: list[str] = []
        min_replies = self.min_replies
        for reply in self._collect(messages, enough=lambda: min_replies > 0 and outcome.replied >= min_replies):
            if reply.has_error():
                outcome.failed += 1
                node = str(reply.metadata.src_node_id)
                outcome.failures[node] = reply.error.reason
                log.warning("node %s failed round %d: %s", node, server_round, reply.error.reason)
                continue
            content = reply.content
            metrics = next(iter(content.metric_records.values()), MetricRecord())
            client_id = _client_id(reply)
            if "refusal" in content.config_records:
                outcome.refused += 1
                reason = str(content["refusal"]["reason"])
                self.ledger.record_refusal(
                    client_id,
                    server_round,
                    metrics.get("epsilon"),
                    reason,
                    node_id=reply.metadata.src_node_id,
                    history=_client_history(reply, "refusal"),
                )
                log.info("client %s refused round %d: %s", client_id, server_round, reason)
                continue
            if len(content.array_records) != 1 or WEIGHT_KEY not in metrics:
                outcome.failed += 1
                log.warning("client %s sent a reply without arrays or %s; skipped", client_id, WEIGHT_KEY)
                continue
            self.ledger.record_training(
                client_id,
                server_round,
                metrics.get("epsilon"),
                node_id=reply.metadata.src_node_id,
                dp=DpRound.from_metrics(metrics),
                history=_client_history(reply, "client"),
            )
            trained.append(client_id)
            outcome.replied += 1
            place = _trained_on(reply)
            outcome.trained_on[place] = outcome.trained_on.get(place, 0) + 1
            if mean is not None:
                mean.add(next(iter(content.array_records.values())), metrics)
            else:
                owned_arrays(reply.content)
                held.append(reply)
        outcome.timed_out = self.unanswered
        if mean is not None and mean.count:
            held = [Message(content=mean.as_reply_content(dtypes), dst_node_id=0, message_type="train")]
        if outcome.replied < min_replies:
            log.warning(
                "round %d: %d nodes trained, fewer than the %d required (min-replies); the global model is unchanged",
                server_round,
                outcome.replied,
                min_replies,
            )
            held = []
            if trained:  # they trained and spent ε on it: recorded, never refunded
                outcome.discarded = True
                self.ledger.record_discarded(trained, server_round)
        elif held:
            counted = _CountStreamedReplies(outcome.replied, outcome.failed) if mean is not None else None
            flower_log = logging.getLogger("flwr")
            if counted is not None:
                flower_log.addFilter(counted)
            try:
                new_arrays, train_metrics = self.strategy.aggregate_train(server_round, held)
            finally:
                if counted is not None:
                    flower_log.removeFilter(counted)
            if new_arrays is not None:
                outcome.arrays = new_arrays
            outcome.train_metrics = dict(train_metrics or {})
        else:
            log.warning("round %d: no client trained; the global model is unchanged", server_round)
        del held
        # The round's settings (num-classes among them) reach the evaluating nodes too.
        eval_config = ConfigRecord(dict(config))
        eval_messages = (
            list(self.strategy.configure_evaluate(server_round, outcome.arrays, eval_config, self.grid))
            if evaluate
            else []
        )
        if eval_messages:
            replies = list(self._collect(eval_messages))
            outcome.sites = site_metrics(replies)
            outcome.evaluate_metrics = dict(self.strategy.aggregate_evaluate(server_round, replies) or {})
        outcome.seconds = time.monotonic() - start
        return outcome

    def run(
        self,
        arrays: ArrayRecord,
        *,
        num_rounds: int,
        first_round: int = 1,
        train_config: Callable[[int], ConfigRecord] = lambda r: ConfigRecord(),
        after_round: Callable[[RoundOutcome], None] = lambda outcome: None,
    ) -> ArrayRecord:
        for server_round in range(first_round, num_rounds + 1):
            reason = self.budget_stop(server_round)
            if reason is not None:
                log.warning("%s", reason)
                self.stopped = {"round": server_round, "reason": reason}
                break
            evaluate = server_round % self.evaluate_every == 0 or server_round == num_rounds
            outcome = self.train_round(server_round, arrays, train_config(server_round), evaluate=evaluate)
            arrays = outcome.arrays
            after_round(outcome)
        return arrays

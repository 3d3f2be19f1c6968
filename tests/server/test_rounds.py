"""Unit tests of the round loop with an in-process grid (the real simulation is in tests/integration)."""

import logging

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, FedMedian
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from server.errors import ServerConfigError
from server.ledger import PrivacyLedger
from server.rounds import RoundLoop, StreamingMean
from server.strategies import STRATEGIES, StrategyOptions, build_strategy
from shared_models.run_config import DEFAULT_RUN_CONFIG, RunConfigError
from tests.server.scripted_grid import ScriptedGrid

pytestmark = pytest.mark.usefixtures("task_identity")


def _content(value: float, n: int, eps: float = 1.0, pid: int = 0) -> RecordDict:
    arrays = ArrayRecord(
        {"w": Array(np.full((3, 2), value, dtype=np.float32)), "b": Array(np.array([value], np.float32))}
    )
    return RecordDict(
        {
            "arrays": arrays,
            "metrics": MetricRecord({"num-examples": n, "train-loss": value, "epsilon": eps}),
            "client": ConfigRecord({"partition-id": pid}),
        }
    )


def test_streaming_mean_equals_flowers_weighted_average():
    contents = [_content(v, n) for v, n in [(1.0, 10), (2.0, 30), (-4.0, 60)]]
    mean = StreamingMean()
    for c in contents:
        mean.add(c["arrays"], c["metrics"])
    ours = mean.as_reply_content({"w": np.dtype(np.float32), "b": np.dtype(np.float32)})
    flowers = aggregate_arrayrecords(contents, "num-examples")
    for key in ("w", "b"):
        np.testing.assert_allclose(ours["arrays"][key].numpy(), flowers[key].numpy(), rtol=1e-6)
    assert ours["metrics"]["num-examples"] == 100
    assert ours["metrics"]["train-loss"] == pytest.approx((10 * 1 + 30 * 2 - 4 * 60) / 100)


@pytest.mark.parametrize("stream", [True, False])
def test_round_skips_failures_records_refusals_and_averages_the_rest(stream):
    values = {1: (1.0, 10), 2: (3.0, 30), 3: None, 4: "error", 5: "refuse"}

    def behaviour(node, msg):
        v = values[node]
        if v == "error":
            return Error(code=1, reason="boom")
        if v == "refuse":
            return RecordDict(
                {
                    "metrics": MetricRecord({"refused": 1, "epsilon": 2.9, "num-examples": 0}),
                    "refusal": ConfigRecord({"reason": "privacy budget exhausted", "partition-id": 5}),
                }
            )
        if v is None:
            return None
        return _content(v[0], v[1], eps=0.5 * node, pid=node)

    grid = ScriptedGrid([1, 2, 3, 4, 5], behaviour)
    ledger = PrivacyLedger(3.0, 1e-5)
    loop = RoundLoop(
        strategy=FedAvg(fraction_evaluate=0.0, min_available_nodes=5),
        grid=grid,
        ledger=ledger,
        stream=stream,
        round_timeout=0.3,
    )
    start = ArrayRecord({"w": Array(np.zeros((3, 2), np.float32)), "b": Array(np.zeros(1, np.float32))})
    outcome = loop.train_round(1, start, ConfigRecord())
    assert (outcome.replied, outcome.failed, outcome.refused, outcome.sampled) == (2, 1, 1, 5)
    np.testing.assert_allclose(outcome.arrays["w"].numpy(), np.full((3, 2), 2.5), rtol=1e-6)
    assert outcome.arrays["w"].numpy().dtype == np.float32
    assert ledger.clients["1"].rounds == [1] and ledger.clients["2"].epsilon == 1.0
    assert ledger.clients["5"].refused_rounds == [1] and "budget" in ledger.clients["5"].last_refusal


def test_non_mean_strategy_sees_every_reply():
    grid = ScriptedGrid([1, 2, 3], lambda node, msg: _content({1: 1.0, 2: 2.0, 3: 100.0}[node], 10, pid=node))
    loop = RoundLoop(
        strategy=FedMedian(fraction_evaluate=0.0, min_available_nodes=3),
        grid=grid,
        ledger=PrivacyLedger(3, 1e-5),
        stream=False,
    )
    start = ArrayRecord({"w": Array(np.zeros((3, 2), np.float32)), "b": Array(np.zeros(1, np.float32))})
    outcome = loop.train_round(1, start, ConfigRecord())
    np.testing.assert_allclose(outcome.arrays["w"].numpy(), 2.0)  # the median, not the mean (34.3)


def test_round_with_no_trainers_keeps_the_model():
    grid = ScriptedGrid([1, 2], lambda node, msg: Error(code=1, reason="down"))
    loop = RoundLoop(strategy=FedAvg(fraction_evaluate=0.0), grid=grid, ledger=PrivacyLedger(3, 1e-5), stream=True)
    start = ArrayRecord({"w": Array(np.ones((3, 2), np.float32))})
    outcome = loop.train_round(1, start, ConfigRecord())
    assert outcome.failed == 2 and outcome.arrays is start


def test_every_strategy_name_builds_a_flower_strategy():
    defaults = StrategyOptions.from_run_config(DEFAULT_RUN_CONFIG)
    for name in STRATEGIES:
        assert build_strategy(name, defaults).__class__.__module__.startswith("flwr.serverapp.strategy")
    with pytest.raises(ServerConfigError, match="unknown strategy 'fedsgd'.*fedavg"):
        build_strategy("fedsgd", defaults)
    with pytest.raises(ServerConfigError, match="fraction-train"):
        StrategyOptions.from_run_config({**DEFAULT_RUN_CONFIG, "fraction-train": 0})


def test_strategy_options_reach_flowers_strategy_from_the_run_config():
    from server.config import ServerConfig

    run = {**DEFAULT_RUN_CONFIG, "strategy": "FedYogi", "server-learning-rate": 0.3, "min-train-nodes": 4}
    config = ServerConfig.from_run_config(run)
    strategy = build_strategy(config.strategy, config.strategy_options)
    assert config.strategy == "fedyogi"
    assert (type(strategy).__name__, strategy.eta, strategy.min_train_nodes) == ("FedYogi", 0.3, 4)
    # One default for every strategy that has a server learning rate: pyproject's, not a second copy per strategy.
    defaults = StrategyOptions.from_run_config(DEFAULT_RUN_CONFIG)
    assert build_strategy("fedyogi", defaults).eta == build_strategy("fedadam", defaults).eta == 0.1


def test_a_missing_key_fails_the_server_config_and_names_the_key():
    from server.config import ServerConfig

    run = {k: v for k, v in DEFAULT_RUN_CONFIG.items() if k != "trimmed-beta"}
    with pytest.raises(RunConfigError, match="no 'trimmed-beta'"):
        ServerConfig.from_run_config(run)


def test_ledger_state_round_trips():
    ledger = PrivacyLedger(3.0, 1e-5)
    ledger.record_training("2", 1, 1.2)
    ledger.record_training("10", 1, 2.0)
    ledger.record_refusal("2", 2, 1.2, "budget")
    again = PrivacyLedger.from_state_dict(ledger.state_dict())
    assert again.state_dict() == ledger.state_dict()
    assert list(ledger.state_dict()["clients"]) == ["2", "10"]
    assert ledger.max_epsilon == 2.0


class _WindowGrid(ScriptedGrid):
    """Answers every message, and remembers the most messages that were ever waiting on it at once."""

    def __init__(self, nodes, behaviour):
        super().__init__(nodes, behaviour)
        self.counter, self.waiting, self.most_waiting = 0, set(), 0

    def push_messages(self, messages):
        ids = []
        for msg in messages:
            self.counter += 1
            mid = f"w{self.counter}"
            msg.metadata.__dict__["_message_id"] = mid
            reply = Message(content=self.behaviour(msg.metadata.dst_node_id, msg), reply_to=msg)
            reply.metadata.__dict__["_src_node_id"] = msg.metadata.dst_node_id
            self.outbox[mid] = reply
            self.waiting.add(mid)
            ids.append(mid)
        self.most_waiting = max(self.most_waiting, len(self.waiting))
        return ids

    def pull_messages(self, message_ids):
        # one reply per pull, as a slow simulation would hand them back
        for m in list(message_ids):
            if m in self.outbox:
                self.waiting.discard(m)
                return [self.outbox.pop(m)]
        return []


@pytest.mark.parametrize("window, expected_most", [(0, 12), (3, 3), (50, 12)])
def test_max_in_flight_bounds_what_waits_on_the_superlink_and_every_node_still_trains(window, expected_most):
    nodes = list(range(1, 13))
    grid = _WindowGrid(nodes, lambda node, msg: _content(float(node), 10, pid=node))
    loop = RoundLoop(
        strategy=FedAvg(fraction_evaluate=0.0, min_available_nodes=12),
        grid=grid,
        ledger=PrivacyLedger(3.0, 1e-5),
        stream=True,
        max_in_flight=window,
        poll_interval=0.0,
    )
    start = ArrayRecord({"w": Array(np.zeros((3, 2), np.float32)), "b": Array(np.zeros(1, np.float32))})
    outcome = loop.train_round(1, start, ConfigRecord())
    assert grid.most_waiting == expected_most
    assert (outcome.replied, outcome.sampled, outcome.timed_out) == (12, 12, 0)
    np.testing.assert_allclose(outcome.arrays["w"].numpy(), np.full((3, 2), 6.5), rtol=1e-6)  # mean of 1..12


class _SlowGrid(ScriptedGrid):
    """Replies come one per pull, after ``empty`` pulls that bring nothing (nodes still training)."""

    def __init__(self, nodes, behaviour, empty):
        super().__init__(nodes, behaviour)
        self.empty = list(empty)

    def pull_messages(self, message_ids):
        if self.empty and self.empty[0] > 0:
            self.empty[0] -= 1
            return []
        if self.empty:
            self.empty.pop(0)
        for m in list(message_ids):
            if m in self.outbox:
                return [self.outbox.pop(m)]
        return []


def test_pulls_wait_longer_while_nothing_comes_and_start_short_again_after_a_reply(monkeypatch):
    from server import rounds

    waits: list[float] = []
    monkeypatch.setattr(rounds.time, "sleep", waits.append)
    grid = _SlowGrid([1, 2], lambda node, msg: _content(float(node), 10, pid=node), empty=[7, 2])
    loop = RoundLoop(strategy=FedAvg(fraction_evaluate=0.0), grid=grid, ledger=PrivacyLedger(3, 1e-5), stream=True)
    start = ArrayRecord({"w": Array(np.zeros((3, 2), np.float32)), "b": Array(np.zeros(1, np.float32))})
    outcome = loop.train_round(1, start, ConfigRecord())
    assert outcome.replied == 2
    growing = [0.05, 0.075, 0.1125, 0.16875, 0.25, 0.25, 0.25]  # x1.5 up to max_poll_interval
    assert waits == pytest.approx(growing + [0.05, 0.075])  # after the first reply: short again


def test_a_negative_max_in_flight_is_refused():
    from flwr.app import Context

    from server.config import ServerConfig

    run = {**DEFAULT_RUN_CONFIG, "max-in-flight": -1}
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run)
    with pytest.raises(ServerConfigError, match="max-in-flight"):
        ServerConfig.from_context(context)


def test_flowers_log_counts_every_streamed_reply_not_the_one_mean():
    # streaming hands FedAvg one pre-averaged reply; Flower's "Received N results" must still say 3, as fedge does
    grid = ScriptedGrid([1, 2, 3, 4], lambda node, msg: Error(code=1, reason="boom") if node == 4 else _content(1, 10))
    loop = RoundLoop(strategy=FedAvg(fraction_evaluate=0.0), grid=grid, ledger=PrivacyLedger(3, 1e-5), stream=True)
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    flower_log = logging.getLogger("flwr")
    level = flower_log.level  # a quiet (non --verbose) fedge command run earlier in this process sets WARNING
    flower_log.setLevel(logging.INFO)
    flower_log.addHandler(handler)
    try:
        start = ArrayRecord({"w": Array(np.zeros((3, 2), np.float32)), "b": Array(np.zeros(1, np.float32))})
        outcome = loop.train_round(1, start, ConfigRecord())
    finally:
        flower_log.removeHandler(handler)
        flower_log.setLevel(level)
    assert (outcome.replied, outcome.failed) == (3, 1)
    assert "aggregate_train: Received 3 results and 1 failures" in lines, lines
    assert not flower_log.filters  # the count applies to that one call only


def test_the_round_counts_trained_replies_by_the_place_each_client_reports():
    def behaviour(node, msg):
        content = _content(1.0, 10, pid=node)
        if node != 4:  # an older client without the field is counted as unknown, not dropped
            content["client"]["trained-on"] = "ray-node:a" if node % 2 else "ray-node:b"
        return content

    grid = ScriptedGrid([1, 2, 3, 4], behaviour)
    loop = RoundLoop(
        strategy=FedAvg(fraction_evaluate=0.0, min_available_nodes=4),
        grid=grid,
        ledger=PrivacyLedger(3, 1e-5),
        stream=True,
    )
    start = ArrayRecord({"w": Array(np.zeros((3, 2), np.float32)), "b": Array(np.zeros(1, np.float32))})
    outcome = loop.train_round(1, start, ConfigRecord())
    assert outcome.replied == 4
    assert outcome.trained_on == {"ray-node:a": 2, "ray-node:b": 1, "unknown": 1}


def test_array_values_views_the_reply_in_place_and_falls_back_where_it_cannot():
    from server.rounds import array_values

    c_order = Array(np.arange(12, dtype=np.float32).reshape(3, 4))
    view = array_values(c_order)
    assert np.array_equal(view, c_order.numpy()) and not view.flags.writeable
    assert np.shares_memory(view, np.frombuffer(c_order.data, dtype=np.uint8))  # no copy
    for other in (np.asfortranarray(np.arange(12.0).reshape(3, 4)), np.arange(4, dtype=">i4")):
        array = Array(other)
        assert np.array_equal(array_values(array), other)  # Fortran order, big-endian: Array.numpy()'s copy


def _on_buffer(array: Array) -> Array:
    """``array`` as fedge's simulation hands a reply's large array to the server: ``data`` a read-only view."""
    view = Array.__new__(Array)
    view.dtype, view.shape, view.stype = array.dtype, array.shape, array.stype
    view.data = memoryview(bytearray(array.data)).toreadonly()
    return view


def test_array_values_and_owned_arrays_take_a_reply_whose_data_is_a_view():
    from server.rounds import array_values, owned_arrays

    for values in (np.arange(12, dtype=np.float32).reshape(3, 4), np.asfortranarray(np.arange(12.0).reshape(3, 4))):
        assert np.array_equal(array_values(_on_buffer(Array(values))), values)  # Fortran order still seen as such
    c_order = _on_buffer(Array(np.arange(12, dtype=np.float32)))
    assert np.shares_memory(array_values(c_order), np.frombuffer(c_order.data, np.uint8))  # read in place, no copy
    record = ArrayRecord()
    record["w"] = _on_buffer(Array(np.ones(5, np.float32)))  # as unpickled: ArrayRecord() would rebuild it from bytes
    reply = Message(RecordDict({"arrays": record}), dst_node_id=1, message_type="train")
    owned_arrays(reply.content)
    assert isinstance(reply.content["arrays"]["w"].data, bytes)
    assert np.array_equal(reply.content["arrays"]["w"].numpy(), np.ones(5, np.float32))


def test_streaming_mean_leaves_every_reply_as_it_came_whatever_its_dtype():
    replies = [
        ArrayRecord({"f64": Array(np.array([1.0, 2.0])), "f32": Array(np.array([3.0], dtype=np.float32))}),
        ArrayRecord({"f64": Array(np.array([5.0, 6.0])), "f32": Array(np.array([7.0], dtype=np.float32))}),
    ]
    sent = [{k: a.numpy().tolist() for k, a in r.items()} for r in replies]  # values, not the (same) bytes object
    mean = StreamingMean()
    for reply, weight in zip(replies, (3, 1), strict=True):  # the first reply weighs more than 1: it is scaled
        mean.add(reply, MetricRecord({"num-examples": weight}))
    assert [{k: a.numpy().tolist() for k, a in r.items()} for r in replies] == sent  # no reply written into
    out = mean.as_reply_content({"f64": np.dtype(np.float64), "f32": np.dtype(np.float32)})["arrays"]
    assert out["f64"].numpy().tolist() == [2.0, 3.0] and out["f32"].numpy().tolist() == [4.0]


def test_streaming_mean_of_many_float32_replies_across_blocks_is_the_float64_weighted_mean():
    rng = np.random.default_rng(0)
    count = 2 * StreamingMean.BLOCK + 5  # two folded blocks and a part block, folded when the mean is read
    values = [rng.normal(size=(50, 3)).astype(np.float32) for _ in range(count)]
    weights = rng.integers(1, 100, size=count)
    mean = StreamingMean()
    for v, w in zip(values, weights, strict=True):
        mean.add(ArrayRecord({"w": Array(v)}), MetricRecord({"num-examples": int(w)}))
    ours = mean.as_reply_content({"w": np.dtype(np.float32)})["arrays"]["w"].numpy()
    exact = sum(v.astype(np.float64) * w for v, w in zip(values, weights, strict=True)) / weights.sum()
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, exact, rtol=1e-6, atol=1e-7)

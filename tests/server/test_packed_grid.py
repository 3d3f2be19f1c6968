"""The ServerApp's packing grid around the round loop (the real deployment: tests/integration/test_deployment.py)."""

import logging

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from client.client_app import packed_arrays_mod
from server.ledger import PrivacyLedger
from server.packed_grid import PackedArraysGrid, packs_by_default
from server.rounds import RoundLoop
from shared_models.packed_arrays import PACKED_KEY, PACKED_STYPE, is_packed, pack, unpack
from tests.server.scripted_grid import ScriptedGrid

pytestmark = pytest.mark.usefixtures("task_identity")


def _start() -> ArrayRecord:
    return ArrayRecord({"w": Array(np.zeros((3, 2), np.float32)), "b": Array(np.zeros(1, np.float32))})


def _node(received: list):
    """A node running fedge's ClientApp mod: what it got off the wire, unpacked for its handler, a packed reply."""

    def handler(msg, context):
        value = float(msg.metadata.dst_node_id)
        arrays = ArrayRecord({k: Array(np.full(v.shape, value, np.float32)) for k, v in msg.content["arrays"].items()})
        content = RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 10, "train-loss": value})})
        return Message(content=content, reply_to=msg)

    def behaviour(node, msg):
        received.append(msg.content["arrays"])
        # its own copy of the message, as a node deserializes one: the mod unpacks in place
        copy = Message(RecordDict(dict(msg.content)), dst_node_id=node, message_type=msg.metadata.message_type)
        reply = packed_arrays_mod(copy, None, handler).content
        assert is_packed(reply["arrays"])
        return reply

    return behaviour


def test_nodes_get_the_global_model_packed_once_and_the_loop_sees_plain_replies():
    received = []
    grid = PackedArraysGrid(ScriptedGrid([1, 2, 3], _node(received)))
    loop = RoundLoop(strategy=FedAvg(fraction_evaluate=0.0), grid=grid, ledger=PrivacyLedger(3, 1e-5), stream=True)
    outcome = loop.train_round(1, _start(), ConfigRecord())
    assert outcome.replied == 3
    assert list(outcome.arrays.keys()) == ["w", "b"]
    np.testing.assert_allclose(outcome.arrays["w"].numpy(), np.full((3, 2), 2.0))  # the mean of 1, 2, 3
    # every node got the global model packed, packed once: the same record in every message
    assert all(is_packed(r) for r in received) and len({id(r) for r in received}) == 1
    assert list(unpack(received[0]).keys()) == ["w", "b"]
    assert grid.take_packed_replies() == 3 and grid.take_packed_replies() == 0  # counted per round


def test_send_and_receive_packs_and_unpacks_too():
    received = []
    scripted = ScriptedGrid([4], _node(received))
    scripted.send_and_receive = lambda messages, timeout=None: scripted.pull_messages(scripted.push_messages(messages))
    grid = PackedArraysGrid(scripted)
    msg = Message(RecordDict({"arrays": _start()}), dst_node_id=4, message_type="train")
    (reply,) = grid.send_and_receive([msg])
    assert PACKED_KEY in received[0] and not is_packed(reply.content["arrays"])
    np.testing.assert_array_equal(reply.content["arrays"]["b"].numpy(), [4.0])


def test_packing_is_for_deployments_not_for_flowers_simulation():
    from flwr.superlink.grid.http_grid import HttpGrid
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    assert not packs_by_default(InMemoryGrid.__new__(InMemoryGrid))
    assert packs_by_default(HttpGrid.__new__(HttpGrid))
    assert is_packed(pack(_start()))  # (what the deployment's messages carry)


def test_a_node_whose_packed_reply_was_cut_is_counted_failed_and_the_round_goes_on(caplog):
    received = []
    honest = _node(received)

    def behaviour(node, msg):
        reply = honest(node, msg)
        if node == 3:  # its reply's bytes cut short on the way
            data = bytes(reply["arrays"][PACKED_KEY].data)[:-5]
            reply["arrays"] = ArrayRecord(
                {PACKED_KEY: Array(dtype="uint8", shape=(len(data),), stype=PACKED_STYPE, data=data)}
            )
        return reply

    grid = PackedArraysGrid(ScriptedGrid([1, 2, 3], behaviour))
    loop = RoundLoop(strategy=FedAvg(fraction_evaluate=0.0), grid=grid, ledger=PrivacyLedger(3, 1e-5), stream=True)
    with caplog.at_level(logging.WARNING):
        outcome = loop.train_round(1, _start(), ConfigRecord())
    assert (outcome.replied, outcome.failed) == (2, 1)
    assert "node 3" in caplog.text and "cut or changed" in caplog.text
    np.testing.assert_allclose(outcome.arrays["w"].numpy(), np.full((3, 2), 1.5))  # the mean of the good two
    # and the next round, every node answering well, takes all three
    loop.grid = PackedArraysGrid(ScriptedGrid([1, 2, 3], honest))
    assert loop.train_round(2, _start(), ConfigRecord()).replied == 3

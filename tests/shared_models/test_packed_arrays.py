"""A message's arrays packed into one Array: exact round trip, fewer Flower objects, damaged bytes refused, and the
ClientApp answering a packed message in kind (the real deployment is in tests/integration/test_deployment.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from client.client_app import app, packed_arrays_mod
from shared_models.models import build_model
from shared_models.packed_arrays import (
    PACKED_KEY,
    PACKED_STYPE,
    PackedArraysError,
    is_packed,
    pack,
    pack_content,
    unpack,
)
from tests.client.heart import node_context

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("task_identity")  # messages cannot be made outside an app without it


def _mixed() -> ArrayRecord:
    return ArrayRecord(
        {
            "net.0.weight": Array(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)),
            "bn.num_batches_tracked": Array(np.array(12, np.int64)),  # 0-d, int64
            "half": Array(np.arange(5, dtype=np.float16)),
            "mask": Array(np.array([True, False, True])),
            "empty": Array(np.zeros((0, 7), np.float32)),
            "fortran": Array(np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3))),
            'odd key: ü/."': Array(np.array([-1.5], np.float64)),
        }
    )


def test_unpack_gives_back_every_array_bit_for_bit_in_order():
    record = _mixed()
    packed = pack(record)
    assert list(packed.keys()) == [PACKED_KEY] and packed[PACKED_KEY].stype == PACKED_STYPE and is_packed(packed)
    back = unpack(packed)
    assert list(back.keys()) == list(record.keys())
    for key, array in record.items():
        got = back[key]
        assert (got.dtype, tuple(got.shape), got.stype, got.data) == (
            array.dtype,
            tuple(array.shape),
            array.stype,
            array.data,
        ), key
        np.testing.assert_array_equal(got.numpy(), array.numpy())


def test_plain_empty_and_already_packed_records_pass_through():
    record = _mixed()
    assert unpack(record) is record and not is_packed(record)
    assert pack(ArrayRecord()).keys() == ArrayRecord().keys()
    packed = pack(record)
    assert pack(packed) is packed


def test_a_packed_train_message_is_far_fewer_flower_objects():
    """What packing is for: on a deployment each object is its own request to the SuperLink."""
    model = build_model("tabular-mlp", input_shape=(13,), num_classes=2)  # the deployment benchmark's model
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "config": ConfigRecord({"server-round": 1})})
    plain = len(get_all_nested_objects(Message(content, dst_node_id=1, message_type="train")))
    packed = len(get_all_nested_objects(Message(pack_content(content), dst_node_id=1, message_type="train")))
    assert plain == 16 and packed == 6, (plain, packed)


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[:-3],  # cut short
        lambda b: b + b"\x00",  # bytes the header does not list
        lambda b: b"\xff" * 8 + b[8:],  # a header length past the end
        lambda b: b[:8] + b"{" + b[9:],  # a header that is not JSON
    ],
)
def test_rejects_a_packed_record_whose_bytes_were_cut_or_changed(damage):
    data = damage(bytes(pack(_mixed())[PACKED_KEY].data))
    damaged = ArrayRecord({PACKED_KEY: Array(dtype="uint8", shape=(len(data),), stype=PACKED_STYPE, data=data)})
    with pytest.raises(PackedArraysError, match="cut or changed|more than its header lists"):
        unpack(damaged)
    back = unpack(pack(_mixed()))  # and a good one still unpacks
    assert list(back.keys()) == list(_mixed().keys())


def test_the_mod_hands_the_handler_plain_arrays_and_packs_the_reply_only_if_the_message_was():
    seen = []

    def handler(msg, context):
        seen.append(list(msg.content["arrays"].keys()))
        doubled = {k: Array(v.numpy() * 2) for k, v in msg.content["arrays"].items() if v.dtype == "float32"}
        return Message(RecordDict({"arrays": ArrayRecord(doubled), "metrics": MetricRecord({"n": 1})}), reply_to=msg)

    record = ArrayRecord({"w": Array(np.ones((2, 2), np.float32))})
    for packed in (False, True):
        arrays = pack(record) if packed else record
        msg = Message(RecordDict({"arrays": arrays}), dst_node_id=1, message_type="train")
        reply = packed_arrays_mod(msg, None, handler)
        assert seen[-1] == ["w"]
        assert is_packed(reply.content["arrays"]) is packed
        np.testing.assert_array_equal(unpack(reply.content["arrays"])["w"].numpy(), np.full((2, 2), 2.0))
        assert reply.content["metrics"]["n"] == 1


def test_fedges_clientapp_trains_on_a_packed_message_and_replies_packed(data_dir):
    """The real ClientApp (its mod, then the train handler) on a heart-disease node."""
    model = build_model("tabular-mlp", input_shape=(13,), num_classes=2)
    state = ArrayRecord(model.state_dict())
    context = node_context(data_dir / "processed.hungarian.data", "hungarian")
    config = ConfigRecord({"server-round": 1, "num-classes": 2})
    msg = Message(RecordDict({"arrays": pack(state), "config": config}), dst_node_id=7, message_type="train")
    reply = app(msg, context)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    assert is_packed(reply.content["arrays"])
    trained = unpack(reply.content["arrays"])
    assert list(trained.keys()) == list(state.keys())
    changed = [not np.array_equal(trained[k].numpy(), state[k].numpy()) for k in state.keys()]
    assert any(changed)  # it trained on the unpacked global model
    assert reply.content["metrics"]["num-examples"] > 0


def test_a_packed_message_cut_on_its_way_gets_an_error_reply_and_the_next_good_one_is_answered():
    calls = []

    def handler(msg, context):
        calls.append(msg)
        return Message(RecordDict({"arrays": msg.content["arrays"]}), reply_to=msg)

    data = bytes(pack(_mixed())[PACKED_KEY].data)[:-1]
    cut = ArrayRecord({PACKED_KEY: Array(dtype="uint8", shape=(len(data),), stype=PACKED_STYPE, data=data)})
    reply = packed_arrays_mod(Message(RecordDict({"arrays": cut}), dst_node_id=1, message_type="train"), None, handler)
    assert reply.has_error() and reply.error.reason.startswith("PackedArraysError: ") and not calls
    good = Message(RecordDict({"arrays": pack(_mixed())}), dst_node_id=1, message_type="train")
    answered = packed_arrays_mod(good, None, handler)
    assert not answered.has_error() and len(calls) == 1
    assert list(unpack(answered.content["arrays"]).keys()) == list(_mixed().keys())


def test_shared_models_packs_flowers_records_without_importing_flower():
    """ARCHITECTURE.md: shared_models may import torch and numpy, not flwr; it works on Flower's records by their
    own classes."""
    code = "import sys, shared_models.packed_arrays; print('flwr' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"

"""The telemetry message has one definition (edge.agent.protocol.Telemetry): the agent builds it, the collector
reads it with the same code, and anything that does not fit it is kept out of the fleet database."""

from __future__ import annotations

import dataclasses
import json

import pytest

from edge.agent.errors import MalformedMessageError
from edge.agent.protocol import Telemetry, parse_telemetry, parse_topic, telemetry_topic
from edge.delivery.collector import FleetStore

MISSING = object()


def _good(**changes: object) -> dict:
    message = Telemetry(
        device_id="dev-1", session="s1", seq=1, inferences=10, errors=0, labelled=10, correct=9, ts=1.5,
        model_id="digits", version=1, runtime="onnx", window_s=2.0, latency_ms_p50=0.2, latency_ms_p95=0.3,
        mean_confidence=0.9, histogram=(5, 5), accuracy=0.9,
    ).to_message()  # fmt: skip
    return {k: v for k, v in {**message, **changes}.items() if v is not MISSING}


def test_what_the_agent_sends_is_what_the_collector_stores(running_v1):
    running_v1.infer(20)
    sent = running_v1.report()
    topic, payload, retained = running_v1.transport.published[-1]
    assert topic == telemetry_topic("dev-1") and not retained
    assert json.loads(payload) == sent
    assert parse_telemetry(parse_topic(topic), payload).to_message() == sent
    assert set(sent) == {"type"} | {f.name for f in dataclasses.fields(Telemetry)}
    store = FleetStore(":memory:")
    assert store.record(topic, payload) == "telemetry"
    (row,) = store.telemetry()
    assert (row["seq"], row["inferences"], row["correct"], row["version"]) == (1, 20, sent["correct"], 1)
    assert row["latency_ms_p50"] == sent["latency_ms_p50"] and row["accuracy"] == sent["accuracy"]


def test_only_the_counts_are_required():
    minimal = {"device_id": "d1", "session": "s", "seq": 3, "inferences": 1, "errors": 0, "labelled": 0, "correct": 0}
    telemetry = parse_telemetry(parse_topic("fedge/v1/devices/d1/telemetry"), json.dumps(minimal).encode())
    assert (telemetry.seq, telemetry.histogram, telemetry.accuracy, telemetry.dropped) == (3, None, None, 0)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"seq": 0}, "seq starts at 1"),
        ({"seq": True}, "'seq' has the wrong type"),
        ({"inferences": -1}, "'inferences' must be >= 0"),
        ({"errors": 1.5}, "'errors' has the wrong type"),
        ({"session": MISSING}, "missing field 'session'"),
        ({"latency_ms_p50": "fast"}, "'latency_ms_p50' has the wrong type"),
        ({"accuracy": float("nan")}, "'accuracy' must be a finite number"),
        ({"histogram": [1, "2"]}, "'histogram' must be a list of counts"),
        ({"histogram": [1, True]}, "'histogram' must be a list of counts"),
        ({"version": "2"}, "'version' has the wrong type"),
        ({"type": "state"}, "is not 'telemetry'"),
        ({"device_id": "dev-2"}, "does not match the topic"),
    ],
)
def test_rejects_malformed_telemetry_and_still_takes_a_good_one(changes, message):
    topic = telemetry_topic("dev-1")
    payload = json.dumps(_good(**changes)).encode()
    with pytest.raises(MalformedMessageError, match=message):
        parse_telemetry(parse_topic(topic), payload)
    store = FleetStore(":memory:")
    assert store.record(topic, payload) is None
    assert [m["topic"] for m in store.malformed()] == [topic]
    assert store.record(topic, json.dumps(_good(seq=2)).encode()) == "telemetry"
    assert store.sequence_report()["received"] == 1

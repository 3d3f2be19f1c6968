"""Every attack on a model update, driven through the agent's handlers without a network: each is rejected with a
reported reason, the old model keeps serving, and the agent goes on working (it still accepts a good update)."""

from __future__ import annotations

import json

import pytest

from edge.agent.config import AgentLimits
from edge.agent.errors import (
    BadSignatureError,
    ExpiredManifestError,
    OversizedPayloadError,
    RollbackError,
    TamperedChunkError,
    UnknownSignerError,
    UnsignedManifestError,
)
from edge.agent.verify import ChunkAssembler, verify_manifest
from edge.delivery.keys import SigningKey
from tests.edge.conftest import deliver, signed
from tests.edge.helpers import onnx_model, signing_key

MANIFEST = "fedge/v1/devices/dev-1/manifest"


def assert_rejected(agent, reason: str) -> None:
    last = agent.transport.outcomes()[-1]
    assert last["outcome"] == "rejected", last
    assert last["reason"] == reason, last
    assert agent.version == 1, "the old model must still be serving"
    assert agent.runner is not None
    assert agent.pending is None
    state = agent.transport.messages("state")[-1]
    assert state["version"] == 1 and state["last_update"]["reason"] == reason
    # and the agent still works: a good, newer update goes through
    deliver(agent, signed(onnx_model(), 9))
    assert agent.version == 9
    assert agent.transport.outcomes()[-1]["outcome"] == "applied"


def test_applies_a_good_update_and_keeps_the_previous_model(running_v1):
    deliver(running_v1, signed(onnx_model(), 2))
    assert running_v1.version == 2
    assert running_v1.store.state.previous.version == 1
    assert running_v1.transport.outcomes()[-1]["outcome"] == "applied"


def test_rejects_tampered_chunk(running_v1):
    model = signed(onnx_model(), 2)
    chunks = model.chunk_messages()
    topic, payload, retain = chunks[1]
    chunks[1] = (topic, bytes([payload[0] ^ 0xFF]) + payload[1:], retain)
    deliver(running_v1, model, chunks=chunks)
    assert_rejected(running_v1, "tampered-chunk")


def test_rejects_truncated_chunk(running_v1):
    model = signed(onnx_model(), 2)
    chunks = model.chunk_messages()
    topic, payload, retain = chunks[-1]
    chunks[-1] = (topic, payload[:-10], retain)
    deliver(running_v1, model, chunks=chunks)
    assert_rejected(running_v1, "truncated")


def test_rejects_truncated_model(running_v1, clock):
    """A model that never arrives whole (the last chunks withheld) is given up after the transfer timeout."""
    model = signed(onnx_model(), 2)
    deliver(running_v1, model, chunks=model.chunk_messages()[:-1])
    assert running_v1.pending is not None
    clock.now += running_v1.limits.transfer_timeout_s + 1
    running_v1.tick()
    assert_rejected(running_v1, "timeout")


def test_rejects_wrong_signer(running_v1):
    deliver(running_v1, signed(onnx_model(), 2, key=SigningKey.generate()))
    assert_rejected(running_v1, "unknown-signer")


def test_rejects_forged_signature(running_v1):
    model = signed(onnx_model(), 2)
    envelope = json.loads(model.envelope)
    envelope["signed"]["version"] = 3  # changed after signing
    running_v1.handle(MANIFEST, json.dumps(envelope).encode())
    assert_rejected(running_v1, "bad-signature")


def test_rejects_unsigned_manifest(running_v1):
    envelope = json.loads(signed(onnx_model(), 2).envelope)
    envelope["signatures"] = []
    running_v1.handle(MANIFEST, json.dumps(envelope).encode())
    assert_rejected(running_v1, "unsigned")


def test_rejects_replayed_older_version(running_v1):
    deliver(running_v1, signed(onnx_model(), 5))
    running_v1.transport.published.clear()
    deliver(running_v1, signed(onnx_model(), 4))  # an old, validly signed manifest replayed
    last = running_v1.transport.outcomes()[-1]
    assert (last["outcome"], last["reason"]) == ("rejected", "rollback")
    assert running_v1.version == 5


def test_rejects_rollback_to_same_version_with_other_bytes(running_v1):
    deliver(running_v1, signed(onnx_model(bad=True), 1))
    assert_rejected(running_v1, "rollback")


def test_rejects_expired_manifest(running_v1, clock):
    deliver(running_v1, signed(onnx_model(), 2, expires_in_s=60, now=clock.now - 120))
    assert_rejected(running_v1, "expired")


def test_rejects_oversized_payload(make_agent, v1):
    agent = make_agent(limits=AgentLimits(max_model_bytes=4096))
    deliver(agent, v1)
    big = signed(onnx_model() + b"\0" * 5000, 2)
    deliver(agent, big)
    assert agent.transport.outcomes()[-1]["reason"] == "oversized"
    agent.handle(MANIFEST, b"{" * (agent.limits.max_manifest_bytes + 1))
    assert agent.transport.outcomes()[-1]["reason"] == "oversized"
    assert agent.version == 1


def test_rejects_malformed_json(running_v1):
    running_v1.handle(MANIFEST, b'{"signed": {"model_id": ')
    assert_rejected(running_v1, "malformed")


def test_rejects_unknown_topic_payloads(running_v1):
    running_v1.handle("fedge/v1/devices/dev-1/cmd/format-disk", b"{}")
    assert running_v1.transport.outcomes()[-1]["reason"] == "unknown-topic"
    running_v1.handle("fedge/v1/devices/dev-2/manifest", signed(onnx_model(), 2).envelope)
    assert running_v1.transport.outcomes()[-1]["reason"] == "unknown-topic"
    running_v1.handle("somewhere/else", b"\x00\x01")
    assert_rejected(running_v1, "unknown-topic")


def test_rejects_wrong_format(running_v1):
    deliver(running_v1, signed(b"\x1c\0\0\0TFL3" + b"\0" * 100, 2, fmt="tflite"))
    assert_rejected(running_v1, "format")


def test_rejects_model_that_does_not_load(running_v1):
    deliver(running_v1, signed(b"\x08\x07garbage-not-a-model", 2))
    assert_rejected(running_v1, "does-not-load")


def test_same_manifest_again_is_not_reported(running_v1, v1):
    before = len(running_v1.transport.outcomes())
    running_v1.handle(MANIFEST, v1.envelope)  # the retained manifest, seen again after a reconnect
    assert len(running_v1.transport.outcomes()) == before


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda e: e.update(signatures=[]), UnsignedManifestError),
        (lambda e: e["signatures"][0].update(keyid="0" * 64), UnknownSignerError),
        (lambda e: e["signatures"][0].update(sig="AAAA"), BadSignatureError),
        (lambda e: e["signed"].update(expires=1), BadSignatureError),
    ],
)
def test_verification_core_without_an_agent(mutate, error, clock):
    from edge.agent.verify import load_public_key

    keyid, public = load_public_key(signing_key().public_pem())
    envelope = json.loads(signed(onnx_model(), 2).envelope)
    mutate(envelope)
    with pytest.raises(error):
        verify_manifest(
            json.dumps(envelope).encode(),
            trusted={keyid: public},
            limits=AgentLimits(),
            now=clock.now,
            floor_version=1,
            model_format="onnx",
        )


def test_verification_core_policy_checks(clock):
    from edge.agent.verify import load_public_key

    keyid, public = load_public_key(signing_key().public_pem())
    trusted, limits = {keyid: public}, AgentLimits()
    with pytest.raises(RollbackError):
        verify_manifest(
            signed(onnx_model(), 2).envelope,
            trusted=trusted,
            limits=limits,
            now=clock.now,
            floor_version=2,
            model_format="onnx",
        )
    with pytest.raises(ExpiredManifestError):
        verify_manifest(
            signed(onnx_model(), 3, now=clock.now - 7200).envelope,
            trusted=trusted,
            limits=limits,
            now=clock.now,
            floor_version=2,
            model_format="onnx",
        )
    manifest = signed(onnx_model(), 3).manifest
    assembler = ChunkAssembler(manifest, started=clock.now, limits=limits)
    with pytest.raises(TamperedChunkError):
        assembler.add(manifest.chunks + 5, b"x")
    with pytest.raises(OversizedPayloadError):
        assembler.add(0, b"x" * (manifest.chunk_size + 1))


def test_device_reports_are_dropped_without_an_answer(running_v1):
    """Another device's state (a broker forwarding it by mistake) must not start devices answering each other."""
    before = list(running_v1.transport.published)
    for topic in ("fedge/v1/devices/dev-2/state", "fedge/v1/devices/dev-2/events", "fedge/v1/devices/dev-1/state"):
        running_v1.handle(topic, b'{"type": "state", "device_id": "dev-2", "state": "ready"}')
    assert running_v1.transport.published == before
    assert running_v1.ignored == 3 and running_v1.version == 1

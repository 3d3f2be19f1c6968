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
from tests.edge.helpers import deliver, onnx_model, rollback_command, signed, signing_key

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


# ------------------------------------------------------------------------------------------------ issue 10 attacks


def test_rejects_mix_and_match_manifest_for_another_device(running_v1):
    """A validly signed manifest copied from another device's retained topic onto this one's."""
    deliver(running_v1, signed(onnx_model(), 2, targets=("dev-2",)))
    assert_rejected(running_v1, "not-addressed")


def test_rejects_manifest_for_another_model_id(running_v1):
    deliver(running_v1, signed(onnx_model(), 2, model_id="other-model"))
    assert_rejected(running_v1, "not-addressed")


def test_rejects_old_format_manifest_without_target(running_v1):
    envelope = json.loads(signed(onnx_model(), 2).envelope)
    del envelope["signed"]["targets"], envelope["signed"]["group"]
    running_v1.handle(MANIFEST, json.dumps(signing_key().sign(envelope["signed"])).encode())
    assert_rejected(running_v1, "not-addressed")


def test_group_manifest_reaches_only_its_group(make_agent, v1):
    agent = make_agent(group="ward-3")
    deliver(agent, v1)
    deliver(agent, signed(onnx_model(), 2, targets=(), group="ward-4"))
    assert agent.transport.outcomes()[-1]["reason"] == "not-addressed" and agent.version == 1
    deliver(agent, signed(onnx_model(), 2, targets=(), group="ward-3"))
    assert agent.version == 2


def test_foreign_model_version_does_not_raise_this_models_floor(make_agent, v1):
    """Floors are per model id: a huge version of another model (a Unix time) never blocks this model's next one."""
    agent = make_agent(model_ids=("digits", "other"))
    deliver(agent, v1)
    deliver(agent, signed(onnx_model(), 1_700_000_000, model_id="other"))
    assert agent.store.state.floor("other") == 1_700_000_000
    deliver(agent, signed(onnx_model(), 2))
    assert (agent.version, agent.store.state.current.model_id) == (2, "digits")
    assert agent.store.state.floor("digits") == 2


def test_rejects_identifier_with_trailing_newline(running_v1):
    from edge.agent.errors import MalformedMessageError
    from edge.agent.protocol import check_id, parse_topic

    with pytest.raises(MalformedMessageError):
        check_id("model id", "digits\n")
    assert parse_topic("fedge/v1/devices/dev-1\n/manifest") is None
    envelope = json.loads(signed(onnx_model(), 2).envelope)
    envelope["signed"]["model_id"] = "digits\n"
    running_v1.handle(MANIFEST, json.dumps(signing_key().sign(envelope["signed"])).encode())
    assert_rejected(running_v1, "malformed")


def test_chunk_index_with_non_ascii_digit_is_refused_as_unknown_topic_not_internal_error(running_v1):
    deliver(running_v1, signed(onnx_model(), 2), chunks=[])
    running_v1.handle("fedge/v1/models/digits/2/onnx/\u00b2", b"x")
    assert running_v1.transport.outcomes()[-1]["reason"] == "unknown-topic"
    assert running_v1.pending is not None  # the transfer goes on
    for topic, payload, _ in signed(onnx_model(), 2).chunk_messages():
        running_v1.handle(topic, payload)
    assert running_v1.version == 2


def test_out_of_range_chunk_does_not_abandon_a_good_transfer(running_v1):
    model = signed(onnx_model(), 2)
    deliver(running_v1, model, chunks=model.chunk_messages()[:1])
    running_v1.handle(f"fedge/v1/models/digits/2/onnx/{model.manifest.chunks + 7}", b"junk")
    assert running_v1.transport.outcomes()[-1]["reason"] == "tampered-chunk"
    assert running_v1.pending is not None
    for topic, payload, _ in model.chunk_messages()[1:]:
        running_v1.handle(topic, payload)
    assert running_v1.version == 2


def test_cleared_manifest_cancels_the_transfer_in_flight(running_v1):
    """A version being rolled back (its manifest cleared) is never installed from chunks still arriving."""
    model = signed(onnx_model(bad=True), 2)
    deliver(running_v1, model, chunks=model.chunk_messages()[:1])
    running_v1.handle(MANIFEST, b"")
    assert running_v1.pending is None
    for topic, payload, _ in model.chunk_messages():
        running_v1.handle(topic, payload)
    assert running_v1.version == 1
    deliver(running_v1, signed(onnx_model(), 3))
    assert running_v1.version == 3


def test_replacing_manifest_cancels_the_transfer_in_flight(running_v1):
    model = signed(onnx_model(bad=True), 3)
    deliver(running_v1, model, chunks=model.chunk_messages()[:1])
    deliver(running_v1, signed(onnx_model(bad=True), 1))  # authentic, addressed, but not newer: refused, and ...
    assert running_v1.transport.outcomes()[-1]["reason"] == "rollback"
    assert running_v1.pending is None  # ... the transfer it replaced is cancelled
    for topic, payload, _ in model.chunk_messages():
        running_v1.handle(topic, payload)
    assert running_v1.version == 1
    deliver(running_v1, signed(onnx_model(), 4))
    assert running_v1.version == 4


def test_rollback_with_a_damaged_previous_model_keeps_the_current_one(running_v1, make_agent, tmp_path):
    deliver(running_v1, signed(onnx_model(), 2))
    previous = running_v1.store.state.previous
    running_v1.store.path(previous).write_bytes(b"damaged")
    running_v1.handle("fedge/v1/devices/dev-1/cmd/rollback", rollback_command("dev-1", 2))
    last = running_v1.transport.outcomes()[-1]
    assert (last["outcome"], last["reason"]) == ("rejected", "previous-unusable")
    assert running_v1.version == 2 and running_v1.runner is not None
    assert running_v1.store.intact(running_v1.store.state.current)  # nothing deleted
    restarted = make_agent(tmp_path / "store")
    assert restarted.version == 2 and restarted.runner is not None
    deliver(restarted, signed(onnx_model(), 3))
    assert restarted.version == 3


def test_restart_with_every_model_damaged_says_so_and_takes_the_same_version_again(running_v1, make_agent, tmp_path):
    deliver(running_v1, signed(onnx_model(), 2))
    for model in (running_v1.store.state.current, running_v1.store.state.previous):
        running_v1.store.path(model).write_bytes(b"damaged")
    restarted = make_agent(tmp_path / "store")
    assert restarted.version is None and restarted.runner is None
    restarted.on_connect()
    assert restarted.transport.messages("state")[-1]["state"] == "waiting"
    deliver(restarted, signed(onnx_model(), 1))  # older than the lost one: still a rollback
    assert restarted.transport.outcomes()[-1]["reason"] == "rollback"
    deliver(restarted, signed(onnx_model(), 2))  # the very version it lost, same bytes: a repair
    assert restarted.version == 2 and restarted.runner is not None


def test_temp_file_write_does_not_follow_a_planted_symlink(running_v1, tmp_path):
    target = tmp_path / "outside.txt"
    target.write_text("keep me")
    planted = running_v1.store.models / ".digits-v2.onnx.tmp"
    planted.symlink_to(target)
    deliver(running_v1, signed(onnx_model(), 2))
    assert running_v1.version == 2
    assert target.read_text() == "keep me"


def test_failed_write_leaves_no_temp_file(running_v1, monkeypatch):
    import os as _os

    from edge.agent import store as store_module

    monkeypatch.setattr(store_module.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "disk full")))
    deliver(running_v1, signed(onnx_model(), 2))
    monkeypatch.undo()
    assert not [f for f in _os.listdir(running_v1.store.models) if f.endswith(".tmp")]
    assert running_v1.version == 1 and running_v1.runner is not None
    deliver(running_v1, signed(onnx_model(), 3))
    assert running_v1.version == 3


def test_junk_topic_flood_leaves_the_topic_cache_bounded(running_v1):
    limits = running_v1.limits
    for i in range(5000):
        running_v1.handle(f"fedge/v1/devices/dev-1/cmd/x{i}/" + "y" * 300, b"junk")
        running_v1.handle(f"fedge/v1/devices/dev-1/cmd/c{i}", b"junk")
    assert len(running_v1.topics) <= limits.topic_cache_entries
    assert len(running_v1._reported) <= limits.reported_rejections
    deliver(running_v1, signed(onnx_model(), 2))
    assert running_v1.version == 2


# ------------------------------------------------------------------------------------------------ key rotation


@pytest.fixture
def rotation(tmp_path):
    """A root key, two signing keys (old, new) as files, and a maker of root-signed key sets."""
    from edge.delivery.keys import build_keyset, write_keypair

    keys = {name: SigningKey.generate() for name in ("root", "old", "new")}
    for name, key in keys.items():
        write_keypair(key, tmp_path / "keys" / name)

    def keyset(*names, revoked=(), version, signer="root", now=None, expires_in_s=3600):
        return build_keyset(
            keys[signer],
            [tmp_path / "keys" / f"{n}.pub" for n in names],
            revoked=[tmp_path / "keys" / f"{n}.pub" for n in revoked],
            version=version,
            now=now,
            expires_in_s=expires_in_s,
        )

    return keys, keyset


def rooted_agent(make_agent, keys, keyset, store=None):
    from edge.agent.verify import load_public_key

    root_id, root_pub = load_public_key(keys["root"].public_pem())
    agent = make_agent(store, trusted={}, root={root_id: root_pub})
    agent.handle("fedge/v1/keys", keyset("old", version=1))
    deliver(agent, signed(onnx_model(), 1, key=keys["old"]))
    assert agent.version == 1
    return agent


def test_rotated_key_is_accepted_and_the_revoked_one_refused(make_agent, rotation, tmp_path):
    keys, keyset = rotation
    agent = rooted_agent(make_agent, keys, keyset)
    agent.handle("fedge/v1/keys", keyset("new", revoked=["old"], version=2))
    assert agent.signers.keyset_version == 2
    deliver(agent, signed(onnx_model(), 2, key=keys["old"]))
    assert agent.transport.outcomes()[-1]["reason"] == "revoked-signer" and agent.version == 1
    deliver(agent, signed(onnx_model(), 3, key=keys["new"]))
    assert agent.version == 3
    restarted = make_agent(tmp_path / "store", trusted={}, root=agent.signers.root)  # the key set survives a restart
    assert restarted.signers.keyset_version == 2 and "old" not in restarted.trusted


def test_rejects_keyset_not_signed_by_the_root(make_agent, rotation):
    keys, keyset = rotation
    agent = rooted_agent(make_agent, keys, keyset)
    agent.handle("fedge/v1/keys", keyset("new", version=5, signer="old"))
    assert agent.transport.outcomes()[-1]["reason"] == "unknown-signer"
    assert agent.signers.keyset_version == 1
    deliver(agent, signed(onnx_model(), 2, key=keys["new"]))
    assert agent.transport.outcomes()[-1]["reason"] == "unknown-signer" and agent.version == 1
    deliver(agent, signed(onnx_model(), 3, key=keys["old"]))
    assert agent.version == 3


def test_rejects_replayed_older_keyset(make_agent, rotation):
    keys, keyset = rotation
    agent = rooted_agent(make_agent, keys, keyset)
    agent.handle("fedge/v1/keys", keyset("new", revoked=["old"], version=2))
    agent.handle("fedge/v1/keys", keyset("old", version=1))  # the old set replayed: would bring the old key back
    assert agent.transport.outcomes()[-1]["reason"] == "rollback"
    assert agent.signers.keyset_version == 2
    deliver(agent, signed(onnx_model(), 2, key=keys["new"]))
    assert agent.version == 2


def test_rejects_expired_keyset(make_agent, rotation, clock):
    keys, keyset = rotation
    agent = rooted_agent(make_agent, keys, keyset)
    agent.handle("fedge/v1/keys", keyset("new", version=2, now=clock.now - 7200, expires_in_s=60))
    assert agent.transport.outcomes()[-1]["reason"] == "expired"
    assert agent.signers.keyset_version == 1
    deliver(agent, signed(onnx_model(), 2, key=keys["old"]))
    assert agent.version == 2


def test_rejects_manifest_signed_under_a_key_set_that_has_since_expired(make_agent, rotation, clock):
    """A freeze attack on the key set: withhold fresh key sets so a (possibly stolen) signing key stays in force.
    Once the accepted set expires, its keys sign nothing more; the root's next set restores updates."""
    keys, keyset = rotation
    agent = rooted_agent(make_agent, keys, keyset)  # key set v1 (old), valid for an hour
    clock.now += 7200
    deliver(agent, signed(onnx_model(), 2, key=keys["old"], now=clock.now))
    assert agent.transport.outcomes()[-1]["reason"] == "expired" and agent.version == 1
    agent.handle("fedge/v1/keys", keyset("old", version=2, now=clock.now))
    deliver(agent, signed(onnx_model(), 3, key=keys["old"], now=clock.now))
    assert agent.version == 3


def test_rejects_rollback_command_for_another_model_at_the_same_version(running_v1):
    """Versions count per model id: a signed rollback meant for another model at v2 must not roll this one back."""
    deliver(running_v1, signed(onnx_model(), 2))
    running_v1.handle("fedge/v1/devices/dev-1/cmd/rollback", rollback_command("dev-1", 2, model_id="other-model"))
    last = running_v1.transport.outcomes()[-1]
    assert (last["outcome"], last["reason"]) == ("rejected", "stale-command"), last
    assert running_v1.version == 2 and running_v1.runner is not None
    running_v1.handle("fedge/v1/devices/dev-1/cmd/rollback", rollback_command("dev-1", 2))  # its own: applies
    assert running_v1.version == 1
    deliver(running_v1, signed(onnx_model(), 3))
    assert running_v1.version == 3

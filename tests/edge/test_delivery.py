"""The server side without a network: keys, artifacts, the collector's store, the rollout's decisions."""

from __future__ import annotations

import json
import os

import pytest

from edge.agent.protocol import Manifest
from edge.delivery.collector import FleetStore, VersionStats
from edge.delivery.errors import ArtifactError, KeyFileError
from edge.delivery.keys import SigningKey, load_signing_key, write_keypair
from edge.delivery.publisher import load_artifact, sign_artifact
from edge.delivery.rollout import RolloutPolicy, choose_canaries, judge_canaries
from tests.edge.helpers import onnx_model


def test_keygen_writes_a_private_key_only_the_owner_reads(tmp_path):
    private, public = write_keypair(SigningKey.generate(), tmp_path / "server")
    assert oct(os.stat(private).st_mode & 0o777) == "0o600"
    assert b"PUBLIC KEY" in public.read_bytes()
    assert load_signing_key(private).public_pem() == public.read_bytes()
    with pytest.raises(KeyFileError, match="exists"):
        write_keypair(SigningKey.generate(), tmp_path / "server")


def test_keygen_with_a_passphrase(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDGE_KEY_PASSPHRASE", "s3cret")
    private, _ = write_keypair(SigningKey.generate(), tmp_path / "server")
    assert b"ENCRYPTED" in private.read_bytes()
    load_signing_key(private)
    monkeypatch.setenv("FEDGE_KEY_PASSPHRASE", "wrong")
    with pytest.raises(KeyFileError):
        load_signing_key(private)


def test_artifact_metadata_from_the_json_beside_it(tmp_path):
    path = tmp_path / "digits-cnn-int8.onnx"
    path.write_bytes(onnx_model())
    (tmp_path / "digits-cnn-int8.onnx.json").write_text(
        json.dumps({"model_id": "digits-cnn", "version": 7, "format": "onnx", "meta": {"accuracy": 0.93}})
    )
    art = load_artifact(path)
    assert (art.model_id, art.version, art.format, art.meta) == ("digits-cnn", 7, "onnx", {"accuracy": 0.93})
    assert load_artifact(path, version=8).version == 8
    model = sign_artifact(art, SigningKey.generate(), chunk_size=1000, targets=["dev-1"])
    assert Manifest.from_signed(json.loads(model.envelope)["signed"]) == model.manifest
    assert b"".join(p for _, p, _ in model.chunk_messages()) == art.data


def test_artifact_refuses_unknown_files(tmp_path):
    (tmp_path / "m.pt").write_bytes(b"x")
    with pytest.raises(ArtifactError, match="must end in"):
        load_artifact(tmp_path / "m.pt")
    (tmp_path / "m.tflite").write_bytes(b"not a flatbuffer")
    with pytest.raises(ArtifactError):
        load_artifact(tmp_path / "m.tflite")


def telemetry(device: str, seq: int, *, session: str = "s1", version: int = 1, correct: int = 9) -> bytes:
    return json.dumps(
        {
            "type": "telemetry",
            "device_id": device,
            "session": session,
            "seq": seq,
            "ts": 0,
            "model_id": "m",
            "version": version,
            "inferences": 10,
            "errors": 0,
            "labelled": 10,
            "correct": correct,
            "latency_ms_p50": 0.1,
            "latency_ms_p95": 0.2,
            "accuracy": correct / 10,
            "histogram": [10],
        }
    ).encode()


def test_collector_counts_gaps_and_drops_duplicates(tmp_path):
    store = FleetStore(tmp_path / "fleet.db")
    for seq in (1, 2, 2, 4, 5):  # 2 arrives twice (QoS 1), 3 never
        store.record("fedge/v1/devices/d1/telemetry", telemetry("d1", seq))
    store.record("fedge/v1/devices/d2/telemetry", telemetry("d2", 1, session="a"))
    store.record("fedge/v1/devices/d2/telemetry", telemetry("d2", 1, session="b"))  # a restart: new session
    assert store.sequence_report() == {"received": 6, "lost": 1, "duplicates": 1}


def test_collector_keeps_the_model_of_a_lost_device(tmp_path):
    store = FleetStore(":memory:")
    state = {
        "type": "state",
        "device_id": "d1",
        "state": "ready",
        "runtime": "onnx",
        "session": "s",
        "model_id": "m",
        "version": 3,
        "previous_version": 2,
        "last_update": None,
    }
    store.record("fedge/v1/devices/d1/state", json.dumps(state).encode())
    store.record("fedge/v1/devices/d1/telemetry", telemetry("d1", 1, version=3))
    store.record("fedge/v1/devices/d1/state", json.dumps({**state, "state": "lost", "model_id": None}).encode())
    row = store.device("d1")
    assert (row["state"], row["version"], row["accuracy"]) == ("lost", 3, 0.9)


def test_collector_stores_malformed_messages_apart(tmp_path):
    store = FleetStore(":memory:")
    assert store.record("fedge/v1/devices/d1/telemetry", b"not json") is None
    assert store.record("fedge/v1/devices/d1/telemetry", telemetry("d2", 1)) is None  # device id mismatch
    assert len(store.malformed()) == 2 and store.devices() == []


def test_version_stats_per_version(tmp_path):
    store = FleetStore(":memory:")
    store.record("fedge/v1/devices/d1/telemetry", telemetry("d1", 1, version=1, correct=9))
    store.record("fedge/v1/devices/d1/telemetry", telemetry("d1", 2, version=2, correct=5))
    assert store.version_stats(["d1"], 1).accuracy == 0.9
    assert store.version_stats(["d1"], 2).accuracy == 0.5


POLICY = RolloutPolicy(max_accuracy_drop=0.02, max_error_rate_increase=0.01)


def test_canaries_healthy_when_no_worse_than_before():
    old, new = VersionStats(4, 400, 0, 400, 360), VersionStats(4, 400, 0, 400, 356)
    assert judge_canaries(new, old, POLICY).healthy


def test_canaries_unhealthy_when_accuracy_drops():
    old, new = VersionStats(4, 400, 0, 400, 360), VersionStats(4, 400, 0, 400, 20)
    verdict = judge_canaries(new, old, POLICY)
    assert not verdict.healthy and "accuracy" in verdict.reason


def test_canaries_unhealthy_when_errors_rise():
    old, new = VersionStats(4, 400, 0, 0, 0), VersionStats(4, 380, 20, 0, 0)
    assert not judge_canaries(new, old, POLICY).healthy


def test_canaries_unhealthy_without_telemetry():
    assert not judge_canaries(VersionStats(0, 0, 0, 0, 0), None, POLICY).healthy


def test_canary_choice_is_stable_and_sized():
    devices = [f"d{i}" for i in range(20)]
    chosen = choose_canaries(devices, 0.1, 1, salt="5")
    assert len(chosen) == 2 and chosen == choose_canaries(list(reversed(devices)), 0.1, 1, salt="5")
    assert choose_canaries(devices[:3], 0.1, 1) != [] and choose_canaries(devices, 1.0, 1) == []


def test_collector_batch_is_one_transaction_with_the_same_rules(tmp_path):
    store = FleetStore(tmp_path / "fleet.db")
    batch = [("fedge/v1/devices/d1/telemetry", telemetry("d1", seq), 100.0 + seq) for seq in (1, 2, 2, 4)]
    batch.append(("fedge/v1/devices/d1/telemetry", b"{broken", 200.0))
    assert store.record_many(batch) == ["telemetry"] * 4 + [None]
    assert store.sequence_report() == {"received": 3, "lost": 1, "duplicates": 1}
    assert store.device("d1")["last_seen"] == 104.0 and len(store.malformed()) == 1


def test_artifact_metadata_from_an_edge_export_description(tmp_path):
    """edge.export writes a large description beside each artifact: the manifest carries only its summary."""
    path = tmp_path / "int8.onnx"
    path.write_bytes(onnx_model())
    description = {
        "schema": "fedge-artifact/1",
        "file": "int8.onnx",
        "format": "onnx",
        "variant": "int8",
        "dtype": "int8",
        "model": "digits-cnn",
        "size-bytes": len(path.read_bytes()),
        "quantization": {"scales": list(range(5000))},  # far over the manifest's metadata bound
        "metrics": {"accuracy": 0.91, "latency-ms": 0.05},
        "source": {"run-id": "demo-1"},
    }
    (tmp_path / "int8.onnx.json").write_text(json.dumps(description))
    art = load_artifact(path, version=3)
    assert (art.model_id, art.version) == ("digits-cnn", 3)
    assert art.meta == {
        "model": "digits-cnn",
        "variant": "int8",
        "dtype": "int8",
        "size_bytes": description["size-bytes"],
        "accuracy": 0.91,
        "latency_ms": 0.05,
        "run_id": "demo-1",
    }

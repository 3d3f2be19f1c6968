"""The server side without a network: keys, artifacts, the collector's store, the rollout's decisions."""

from __future__ import annotations

import json
import os
from pathlib import Path

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


def test_a_user_models_import_path_becomes_a_valid_model_id(tmp_path):
    """A user's model is named by import path in the run (iot_sensors.task:build_model): not a topic id as it is."""
    path = tmp_path / "int8.onnx"
    path.write_bytes(onnx_model())
    description = {"schema": "fedge-artifact/1", "format": "onnx", "model": "iot_sensors.task:build_model"}
    (tmp_path / "int8.onnx.json").write_text(json.dumps(description))
    assert load_artifact(path, version=2).model_id == "iot-sensors-task-build-model"
    assert load_artifact(path, version=2, model_id="watch-motion").model_id == "watch-motion"


def test_canaries_held_without_a_baseline():
    """No reports on the previous version (no collector ran): fail closed, never pass by default."""
    new = VersionStats(4, 400, 0, 400, 360)
    verdict = judge_canaries(new, None, POLICY)
    assert not verdict.healthy and verdict.held and "no baseline" in verdict.reason
    verdict = judge_canaries(new, VersionStats(1, 100, 0, 100, 90), POLICY, canaries=2)  # 1 of 4 reports
    assert verdict.held


def test_canaries_held_with_too_few_reports_on_the_new_version():
    verdict = judge_canaries(VersionStats(1, 100, 0, 100, 90), VersionStats(8, 800, 0, 800, 720), POLICY, canaries=2)
    assert not verdict.healthy and verdict.held and "not enough" in verdict.reason


def test_accept_no_baseline_override_is_recorded():
    policy = RolloutPolicy(accept_no_baseline=True)
    verdict = judge_canaries(VersionStats(4, 400, 0, 400, 360), None, policy)
    assert verdict.healthy and not verdict.held and verdict.override.startswith("accept-no-baseline")
    assert not judge_canaries(VersionStats(4, 300, 100, 0, 0), None, policy).healthy  # its error rate still counts


def test_broker_refuses_reserved_device_names(tmp_path):
    from edge.delivery.errors import BrokerError
    from edge.delivery.mosquitto import write_mosquitto_files

    for bad in (["fedge-server"], ["fedge-collector"], ["dev-1", "dev-1"], ["dev-1\n"]):
        with pytest.raises(BrokerError):
            write_mosquitto_files(tmp_path / "m", port=1883, devices=bad)


def test_broker_config_ties_client_ids_to_users_and_writes_secrets_0600(tmp_path):
    from edge.delivery.mosquitto import SERVER_USER, write_mosquitto_files

    setup = write_mosquitto_files(tmp_path / "m", port=18830, devices=["dev-1"], server_port=18831)
    conf = setup.config_file.read_text()
    device_listener = conf.split("listener 18831")[0]
    assert "use_username_as_clientid true" in device_listener and "per_listener_settings true" in conf
    assert SERVER_USER not in (tmp_path / "m" / "passwd-devices").read_text()
    assert "dev-1" not in (tmp_path / "m" / "passwd-server").read_text()
    assert setup.address(SERVER_USER).port == 18831 and setup.address("dev-1").port == 18830
    credentials = setup.write_credentials()
    for path in (credentials, setup.password_file("dev-1"), tmp_path / "m" / "passwd-devices"):
        assert oct(os.stat(path).st_mode & 0o777) == "0o600", path
    assert setup.password_file("dev-1").read_text().strip() == setup.passwords["dev-1"]


def test_agent_argv_never_carries_the_broker_password(tmp_path, monkeypatch):
    from edge.agent.cli import agent_argv, config_from_args, parser
    from edge.agent.errors import AgentConfigError

    common = {"device_id": "dev-1", "store": tmp_path, "model_ids": ["digits"]}
    with pytest.raises(AgentConfigError, match="password"):
        agent_argv(broker_url="mqtt://dev-1:s3cret@127.0.0.1:1883", **common)
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    argv = agent_argv(broker_url="mqtt://dev-1@127.0.0.1:1883", password_file=secret, **common)
    assert "s3cret" not in " ".join(argv)
    with pytest.raises(AgentConfigError, match="chmod 600"):
        config_from_args(parser().parse_args(argv))
    secret.chmod(0o600)
    assert config_from_args(parser().parse_args(argv)).broker.password == "s3cret"
    monkeypatch.setenv("FEDGE_BROKER_PASSWORD", "from-env")
    argv = agent_argv(broker_url="mqtt://dev-1@127.0.0.1:1883", **common)
    assert config_from_args(parser().parse_args(argv)).broker.password == "from-env"


def test_keyset_lists_signing_keys_and_refuses_the_root_or_a_key_both_kept_and_revoked(tmp_path):
    from edge.agent.protocol import KeySet
    from edge.delivery.keys import build_keyset

    root, signer = SigningKey.generate(), SigningKey.generate()
    write_keypair(root, tmp_path / "root")
    write_keypair(signer, tmp_path / "signer")
    envelope = json.loads(build_keyset(root, [tmp_path / "signer.pub"], version=3))
    keyset = KeySet.from_signed(envelope["signed"])
    assert keyset.version == 3 and list(keyset.keys) == [signer.keyid]
    assert envelope["signatures"][0]["keyid"] == root.keyid
    with pytest.raises(KeyFileError):
        build_keyset(root, [tmp_path / "root.pub"])
    with pytest.raises(KeyFileError):
        build_keyset(root, [tmp_path / "signer.pub"], revoked=[tmp_path / "signer.pub"])


def test_manifest_is_signed_per_device():
    from edge.agent.protocol import Manifest
    from edge.delivery.publisher import Artifact

    key = SigningKey.generate()
    model = sign_artifact(Artifact(Path("m.onnx"), onnx_model(), "digits", 2, "onnx", {}), key)
    assert model.manifest.targets == ()
    for device in ("dev-a", "dev-b"):
        addressed = model.addressed(key, [device])
        signed_part = Manifest.from_signed(json.loads(addressed.envelope)["signed"])
        assert signed_part.targets == (device,) and signed_part.chunk_sha256 == model.manifest.chunk_sha256
    with pytest.raises(ArtifactError):
        model.addressed(key, [])

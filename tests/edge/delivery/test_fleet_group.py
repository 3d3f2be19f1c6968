"""Collectors as a group, without a broker or a database server: what they subscribe to, which store a --db names,
and what is refused."""

from __future__ import annotations

import json
import time

import pytest

from edge.agent.protocol import BrokerAddress, telemetry_topic
from edge.delivery.collector import FleetStore, collector_for, fleet_subscriptions, open_fleet_store
from edge.delivery.errors import DeliveryError
from edge.delivery.fleet_db import is_postgres_url, redacted
from simulations.benchmarks.mqtt_telemetry import telemetry_payload

BROKER = BrokerAddress("127.0.0.1", 1883)


def test_group_shares_telemetry_and_events_but_every_member_gets_the_states():
    subs = fleet_subscriptions("fleet")
    assert "fedge/v1/devices/+/state" in subs  # retained states reach only non-shared subscriptions everywhere
    assert "$share/fleet/fedge/v1/devices/+/telemetry" in subs
    assert "$share/fleet/fedge/v1/devices/+/events" in subs
    assert not any(s.startswith("$share") for s in fleet_subscriptions(""))


def test_rejects_a_group_name_that_is_not_an_id():
    with pytest.raises(Exception, match="collector group"):
        fleet_subscriptions("a/#")


def test_a_group_needs_a_shared_postgres_database(tmp_path):
    with pytest.raises(DeliveryError, match="postgresql://"):
        collector_for(BROKER, str(tmp_path / "fleet.db"), group="fleet")


def test_sqlite_stays_the_default_for_one_collector(tmp_path):
    collector = collector_for(BROKER, str(tmp_path / "fleet.db"))
    assert isinstance(collector.store, FleetStore) and collector.client_id == "fedge-collector"
    collector.store.close()
    assert is_postgres_url("postgresql://u@h/db") and not is_postgres_url(str(tmp_path / "fleet.db"))
    assert isinstance(open_fleet_store(tmp_path / "other.db"), FleetStore)


def test_postgres_url_is_shown_without_its_password():
    assert redacted("postgresql://fleet:s3cret@db.local:5432/fleet") == "postgresql://fleet:***@db.local:5432/fleet"
    assert redacted("postgresql://fleet@db.local/fleet") == "postgresql://fleet@db.local/fleet"
    # libpq also takes a password in the query string
    assert redacted("postgresql://db.local/fleet?user=fleet&password=s3cret&sslmode=require") == (
        "postgresql://db.local/fleet?user=fleet&password=***&sslmode=require"
    )


def test_report_counts_per_device_in_one_query(tmp_path):
    store = FleetStore(tmp_path / "fleet.db")
    now = time.time()
    store.record_many([(telemetry_topic(d), telemetry_payload(d, s), now) for d in ("a-1", "a-2") for s in (1, 2)])
    assert store.report_counts(["a-1", "a-2", "a-3"], 2, now) == {"a-1": 2, "a-2": 2}
    assert store.report_counts(["a-1"], 3, now) == {}
    assert set(store.device_states()) == {"a-1", "a-2"}
    store.close()


class _Devices:
    """A fleet without a network: a publisher whose messages the devices answer at once, through the store, with
    the verification core deciding (so a manifest for another group is refused as the agent refuses it)."""

    def __init__(self, store: FleetStore, key, group: str) -> None:
        self.store, self.key, self.group = store, key, group
        self.envelopes: dict[str, bytes] = {}

    def publish_chunks(self, model) -> None:
        pass

    def assign(self, model, device_ids, *, group: str = "") -> None:
        from edge.agent.config import AgentLimits
        from edge.agent.errors import RejectedUpdateError
        from edge.agent.protocol import events_topic, state_topic
        from edge.agent.verify import load_public_key, verify_manifest
        from edge.delivery.publisher import ModelPublisher

        sent: list = []

        class Client:
            def publish_all(self, messages, timeout):
                sent.extend(messages)

        ModelPublisher(Client(), self.key).assign(model, list(device_ids), group=group)
        now = time.time()
        trusted = dict([load_public_key(self.key.public_pem())])
        for topic, envelope, _ in sent:
            device = topic.split("/")[3]
            self.envelopes[device] = envelope
            try:
                m = verify_manifest(
                    envelope, trusted=trusted, limits=AgentLimits(), now=now, floor_version=1, model_format="onnx",
                    device_id=device, group=self.group, model_ids=("m",),
                )  # fmt: skip
                outcome, version = "applied", m.version
            except RejectedUpdateError:
                outcome, version = "rejected", None
            msg = {"type": "update", "device_id": device, "outcome": outcome, "version": version, "reason": outcome}
            state = {"type": "state", "device_id": device, "state": "ready", "runtime": "onnx", "session": "s",
                     "ts": now, "model_id": "m", "version": version or 1}  # fmt: skip
            self.store.record_many(
                [
                    (events_topic(device), json.dumps(msg).encode(), now),
                    (state_topic(device), json.dumps(state).encode(), now),
                    (telemetry_topic(device), telemetry_payload(device, 10), now),
                ]
            )


class _Collector:
    def __init__(self, store: FleetStore) -> None:
        self.store = store

    def wait_until(self, predicate, timeout: float, poll: float = 0.05) -> bool:
        return predicate(self.store)


def test_group_rollout_signs_one_manifest_for_the_whole_fleet(tmp_path):
    from edge.agent.protocol import state_topic
    from edge.delivery.publisher import Artifact, sign_artifact
    from edge.delivery.rollout import RolloutPolicy, StagedRollout
    from tests.edge.helpers import onnx_model, signing_key

    store = FleetStore(tmp_path / "fleet.db")
    devices = [f"d-{i:03d}" for i in range(200)]
    now = time.time()
    for d in devices:  # on v1, with telemetry on it for the canaries' baseline
        state = {"type": "state", "device_id": d, "state": "ready", "runtime": "onnx", "session": "s", "ts": now,
                 "model_id": "m", "version": 1}  # fmt: skip
        payload = telemetry_payload(d, 1).replace(b'"version":2', b'"version":1')
        store.record_many([(state_topic(d), json.dumps(state).encode(), now), (telemetry_topic(d), payload, now)])
    model = sign_artifact(Artifact(tmp_path / "m.onnx", onnx_model(), "m", 2, "onnx"), signing_key())
    fleet = _Devices(store, signing_key(), group="fleet")
    policy = RolloutPolicy(canary_fraction=0.1, health_reports=1, max_accuracy_drop=1.0)
    report = StagedRollout(
        publisher=fleet, collector=_Collector(store), models={"onnx": model}, policy=policy, group="fleet"
    ).run(devices)
    assert report.status == "completed", report.verdict
    assert sorted(report.applied) == devices and len(report.canaries) == 20
    assert len(set(fleet.envelopes.values())) == 1  # one signed manifest, the same bytes on every device's topic
    # and a device of another group refuses it, as the agent's verification core does
    other = _Devices(store, signing_key(), group="elsewhere")
    other.assign(model, ["d-000"], group="fleet")
    assert store.events("d-000")[-1]["outcome"] == "rejected"

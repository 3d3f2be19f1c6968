"""Collectors as a group, without a broker or a database server: what they subscribe to, which store a --db names,
and what is refused."""

from __future__ import annotations

import time

import pytest

from edge.agent.protocol import BrokerAddress, telemetry_topic
from edge.delivery.collector import FleetStore, collector_for, fleet_subscriptions, open_fleet_store
from edge.delivery.errors import DeliveryError
from edge.delivery.postgres_store import _redacted, is_postgres_url
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
    assert _redacted("postgresql://fleet:s3cret@db.local:5432/fleet") == "postgresql://fleet:***@db.local:5432/fleet"
    assert _redacted("postgresql://fleet@db.local/fleet") == "postgresql://fleet@db.local/fleet"


def test_report_counts_per_device_in_one_query(tmp_path):
    store = FleetStore(tmp_path / "fleet.db")
    now = time.time()
    store.record_many([(telemetry_topic(d), telemetry_payload(d, s), now) for d in ("a-1", "a-2") for s in (1, 2)])
    assert store.report_counts(["a-1", "a-2", "a-3"], 2, now) == {"a-1": 2, "a-2": 2}
    assert store.report_counts(["a-1"], 3, now) == {}
    assert set(store.device_states()) == {"a-1", "a-2"}
    store.close()

"""Prometheus metrics computed from the fleet database at scrape time, and the read-only FleetStore they use."""

from __future__ import annotations

import json
import sqlite3

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge.agent.protocol import state_message, state_topic, telemetry_topic
from edge.delivery.collector import FleetStore
from edge.delivery.metrics import FleetMetrics, metrics_text


def _state(store: FleetStore, device: str, state: str, version: int | None) -> None:
    message = state_message(
        device_id=device, state=state, runtime="onnx", session="s", ts=1.0, model_id="m", version=version
    )
    store.record(state_topic(device), json.dumps(message).encode())


def _telemetry(store: FleetStore, device: str, seq: int) -> None:
    message = {"type": "telemetry", "device_id": device, "session": "s", "seq": seq, "version": 1}
    message |= {"inferences": 4, "errors": 0, "labelled": 4, "correct": 3, "latency_ms_p50": 0.2}
    store.record(telemetry_topic(device), json.dumps(message).encode())


def _families(metrics: FleetMetrics) -> dict:
    return {f.name: f for f in text_string_to_metric_families(metrics_text(metrics).decode())}


def test_gauges_follow_the_table_at_every_scrape(tmp_path):
    store = FleetStore(tmp_path / "fleet.db")
    metrics = FleetMetrics(tmp_path / "fleet.db")  # opened read-only per scrape, as the dashboard does
    _state(store, "a", "ready", 1)
    _state(store, "b", "ready", 2)
    families = _families(metrics)
    states = {s.labels["state"]: s.value for s in families["fedge_fleet_devices"].samples}
    assert states["ready"] == 2 and states["lost"] == 0
    _state(store, "b", "lost", None)
    _telemetry(store, "a", 1)
    _telemetry(store, "a", 4)  # 2 and 3 never arrived
    families = _families(metrics)
    states = {s.labels["state"]: s.value for s in families["fedge_fleet_devices"].samples}
    assert (
        (states["ready"], states["lost"])
        == (1, 1)
        == tuple(sum(1 for d in store.devices() if d["state"] == s) for s in ("ready", "lost"))
    )
    versions = {s.labels["version"]: s.value for s in families["fedge_fleet_devices_by_version"].samples}
    assert versions == {"1": 1, "2": 1}  # the last will keeps the version the device last reported
    assert families["fedge_fleet_telemetry_received"].samples[0].value == 2
    assert families["fedge_fleet_telemetry_lost"].samples[0].value == 2
    store.close()


def test_a_database_not_there_yet_reads_as_an_empty_fleet(tmp_path):
    families = _families(FleetMetrics(tmp_path / "none.db"))
    assert sum(s.value for s in families["fedge_fleet_devices"].samples) == 0
    assert not (tmp_path / "none.db").exists()  # reading created nothing


def test_read_only_store_cannot_write(tmp_path):
    FleetStore(tmp_path / "fleet.db").close()
    reader = FleetStore(tmp_path / "fleet.db", read_only=True)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        _state(reader, "a", "ready", 1)
    reader.close()
    with pytest.raises(FileNotFoundError):
        FleetStore(tmp_path / "missing.db", read_only=True)

"""A fleet that outgrows one collector: collectors as a group on an MQTT shared subscription (real Mosquitto), writing
to one PostgreSQL database (a real server, started by the ``postgres_server`` fixture); and the store interface both
stores (SQLite, PostgreSQL) answer the same way. No assertion on wall-clock time; every wait has a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from edge.agent.link import make_client
from edge.agent.protocol import events_topic, state_message, state_topic, telemetry_topic
from edge.delivery.brokers import free_port
from edge.delivery.collector import FleetStore, collector_for, open_fleet_store
from edge.delivery.mosquitto import SERVER_USER, MosquittoProcess, write_mosquitto_files
from edge.delivery.postgres_store import PostgresFleetStore
from simulations.benchmarks.mqtt_telemetry import telemetry_payload
from tests.integration.test_edge_delivery import needs_mosquitto, wait_for

pytestmark = pytest.mark.integration

DEVICES = [f"dev-{i}" for i in range(4)]


def state(
    device: str, name: str = "ready", *, version: int = 1, ts: float | None = None, lineage: dict | None = None
) -> bytes:
    msg = state_message(
        device_id=device,
        state=name,
        runtime="onnx",
        session="bench",
        ts=time.time() if ts is None else ts,
        model_id="m",
        version=version,
        lineage=lineage,
    )
    return json.dumps(msg).encode()


def event(device: str, outcome: str = "applied", version: int = 2) -> bytes:
    return json.dumps({"type": "update", "device_id": device, "outcome": outcome, "version": version}).encode()


# ------------------------------------------------------------------------------------------ the store interface


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = FleetStore(tmp_path / "fleet.db")
    else:
        s = open_fleet_store(request.getfixturevalue("postgres_url"))
        assert isinstance(s, PostgresFleetStore)
    yield s
    s.close()


def test_store_interface_counts_duplicates_gaps_and_malformed(store):
    now = time.time()
    messages = [(state_topic("dev-0"), state(device="dev-0", version=1), now)]
    messages += [(telemetry_topic("dev-0"), telemetry_payload("dev-0", seq), now + seq) for seq in (1, 2, 3, 5, 6)]
    messages += [(telemetry_topic("dev-1"), telemetry_payload("dev-1", 1), now)]
    messages += [(events_topic("dev-0"), event("dev-0"), now + 7)]
    messages += [("fedge/v1/devices/dev-0/nonsense", b"{}", now), (telemetry_topic("dev-1"), b"not json", now)]
    kinds = store.record_many(messages)
    assert kinds == ["state", *["telemetry"] * 6, "events", None, None]
    # a QoS 1 redelivery (or another collector's copy) is counted, not stored again
    assert store.record_many([(telemetry_topic("dev-0"), telemetry_payload("dev-0", 2), now + 9)]) == ["telemetry"]
    assert store.sequence_report() == {"received": 6, "lost": 1, "duplicates": 1}
    assert [d["device_id"] for d in store.devices()] == ["dev-0", "dev-1"]
    states = store.device_states()
    assert states["dev-0"]["version"] == 1 and states["dev-0"]["state"] == "ready"
    assert states["dev-1"]["state"] is None  # telemetry only: seen, no state yet
    assert store.report_counts(["dev-0", "dev-1"], 2, now + 2) == {"dev-0": 4}
    assert store.reports_since("dev-0", 2, now + 2) == 4
    stats = store.version_stats(["dev-0"], 2)
    assert (stats.reports, stats.inferences, stats.correct) == (5, 160, 155)
    assert [(e["device_id"], e["outcome"]) for e in store.events(since=now)] == [("dev-0", "applied")]
    assert store.events("dev-1") == []
    assert len(store.malformed()) == 2
    assert len(store.telemetry(since=now, limit=3)) == 3
    assert store.event_counts() == [{"outcome": "applied", "reason": "", "n": 1}]


def test_the_dashboards_reads_take_the_latest_rows_through_indexes_not_the_whole_table(store):
    """What the dashboard and the metrics read on every poll (each device's latest report, the fleet's latest reports,
    the latest update outcomes) goes through the telemetry indexes, so a poll costs the same whatever the fleet has
    stored (simulations/benchmarks/results/fleet_queries.md: 2,000 devices x 250 reports). Checked on each store's
    own query plan for the SQL the store sends."""
    now = time.time()
    messages = [(telemetry_topic(d), telemetry_payload(d, seq), now + seq) for seq in (1, 2, 3) for d in ("a", "b")]
    messages += [(events_topic("a"), event("a", version=v), now + v) for v in (1, 2, 3)]
    store.record_many(messages)
    sent: list[tuple[str, tuple]] = []
    query = store._query

    def recording(sql, args=()):
        sent.append((sql, tuple(args)))
        return query(sql, args)

    store._query = recording
    latest = {d["device_id"]: d["inferences"] for d in store.devices()}
    assert latest == {"a": 32, "b": 32}
    assert [r["seq"] for r in store.telemetry(limit=2)] == [3, 3]
    assert [e["version"] for e in store.events(limit=2)] == [2, 3]  # the latest two, oldest first
    assert [e["version"] for e in store.events("a", limit=1)] == [3]
    assert [e["version"] for e in store.events("a")] == [1, 2, 3]
    store._query = query
    devices_sql, telemetry_sql = sent[0], sent[1]
    if isinstance(store, PostgresFleetStore):
        db = store._reader  # a tiny table: make the planner show what a large one gets
        db.execute("SET enable_seqscan = off")
        db.execute("SET enable_sort = off")

        def plan(sql, args):
            return "\n".join(next(iter(r.values())) for r in db.execute("EXPLAIN " + sql, args).fetchall())
    else:

        def plan(sql, args):
            return "\n".join(r[3] for r in store._db.execute("EXPLAIN QUERY PLAN " + sql, args).fetchall())

    assert "telemetry_device_received" in plan(*devices_sql), plan(*devices_sql)
    assert "telemetry_received" in plan(*telemetry_sql), plan(*telemetry_sql)


def test_store_keeps_every_telemetry_value_exactly(store):
    """What a device reported comes back bit for bit from either store: floats that have no short decimal form, the
    largest and smallest ones, nulls and non-ASCII text (PostgreSQL's rows travel as one JSON document per batch)."""
    awkward = [1 / 3, 0.1 + 0.2, 1e-05, 5e-324, 1.7976931348623157e308, 123456789.12345679]
    sent = []
    for seq, value in enumerate(awkward, start=1):
        msg = json.loads(telemetry_payload("dev-0", seq, model_id="modèle-ü"))
        msg.update(latency_ms_p50=value, latency_ms_p95=value * 2 if value < 1e300 else value, accuracy=None)
        msg.update(ts=1764755123.4567891 + seq, inferences=2**62 + seq, correct=seq)
        sent.append(msg)
    assert store.record_many([(telemetry_topic("dev-0"), json.dumps(m).encode(), 1764755200.5 + i) for i, m in
                              enumerate(sent)]) == ["telemetry"] * len(sent)  # fmt: skip
    got = store.telemetry()
    assert len(got) == len(sent)
    for msg, row in zip(sent, got, strict=True):
        for key in ("latency_ms_p50", "latency_ms_p95", "ts", "inferences", "correct", "model_id", "seq"):
            assert row[key] == msg[key] and type(row[key]) is type(msg[key]), (key, row[key], msg[key])
        assert row["accuracy"] is None and row["device_id"] == "dev-0"


def test_postgres_keeps_the_newer_state_whichever_collector_writes_last(postgres_url):
    a, b = open_fleet_store(postgres_url), open_fleet_store(postgres_url)
    try:
        now = time.time()
        a.record(state_topic("dev-0"), state("dev-0", "ready", version=2, ts=now + 1))
        b.record(state_topic("dev-0"), state("dev-0", "updating", version=1, ts=now))  # a lagging collector
        assert a.device_states()["dev-0"]["version"] == 2
        lost = json.dumps({"type": "state", "device_id": "dev-0", "state": "lost", "session": "bench"}).encode()
        b.record(state_topic("dev-0"), lost, now + 2)  # the last will: no ts, no model; the model is kept
        assert (a.device("dev-0")["state"], a.device("dev-0")["version"]) == ("lost", 2)
    finally:
        a.close()
        b.close()


def test_read_only_postgres_store_refuses_writes(postgres_url):
    from edge.delivery.errors import DeliveryError

    open_fleet_store(postgres_url).close()  # the collector creates the tables
    reader = open_fleet_store(postgres_url, read_only=True)
    try:
        assert reader.devices() == []
        with pytest.raises(DeliveryError, match="read-only"):
            reader.record(state_topic("dev-0"), state("dev-0"))
    finally:
        reader.close()


# ------------------------------------------------------------------------ issue 13: lineage, ε and field feedback


def lineage(epsilon: float, accuracy_min: float = 0.95) -> dict:
    """The signed lineage a device reports in its state: its acceptance report and its privacy statement."""
    return {
        "run-id": "r1",
        "acceptance": {"verdict": "accepted", "worst-site-drop": 0.0, "accuracy-min": accuracy_min},
        "privacy": {"epsilon-max": epsilon, "delta": 1e-5},
    }


def poor_telemetry(device: str, seq: int, version: int) -> bytes:
    """Telemetry of a model that gets 10 of its 32 labelled samples right in the field."""
    msg = json.loads(telemetry_payload(device, seq, version=version, model_id="m"))
    msg.update(correct=10, accuracy=10 / 32)
    return json.dumps(msg).encode()


def test_store_keeps_each_devices_lineage_and_epsilon_from_its_state(store):
    from edge.delivery.cli import _with_lineage
    from edge.delivery.feedback import device_lineage

    now = time.time()
    store.record(state_topic("dev-0"), state("dev-0", version=1, ts=now, lineage=lineage(2.5)), now)
    store.record(state_topic("dev-1"), state("dev-1", version=1, ts=now), now)  # a model without a lineage
    lost = json.dumps({"type": "state", "device_id": "dev-0", "state": "lost", "session": "bench"}).encode()
    store.record(state_topic("dev-0"), lost, now + 1)  # the last will carries no model: the lineage stays
    known = device_lineage(store)
    assert known["dev-0"]["epsilon"] == 2.5 and known["dev-0"]["version"] == 1
    assert known["dev-0"]["lineage"]["acceptance"]["accuracy-min"] == 0.95
    assert known["dev-1"]["epsilon"] is None and known["dev-1"]["lineage"] is None
    assert {r["device_id"]: r["epsilon"] for r in _with_lineage(store)} == {"dev-0": 2.5, "dev-1": None}
    store.record(state_topic("dev-0"), state("dev-0", version=2, ts=now + 2, lineage=lineage(4.0)), now + 2)
    assert (device_lineage(store)["dev-0"]["version"], device_lineage(store)["dev-0"]["epsilon"]) == (2, 4.0)


def test_store_keeps_one_degraded_event_per_group_and_its_action(store):
    from edge.delivery.feedback import FeedbackConfig, FeedbackMonitor, degraded_events

    now = time.time()
    messages = [(state_topic(d), state(d, version=2, ts=now, lineage=lineage(3.0)), now) for d in DEVICES[:2]]
    messages += [(telemetry_topic(d), poor_telemetry(d, seq, 2), now + seq) for d in DEVICES[:2] for seq in (1, 2, 3)]
    store.record_many(messages)
    monitor = FeedbackMonitor(store, FeedbackConfig(min_reports=3))
    (event,) = monitor.check()
    assert (event.model_id, event.version, event.measure, event.devices) == ("m", 2, "accuracy", ("dev-0", "dev-1"))
    assert event.baseline == 0.95 and event.value < 0.5
    assert monitor.check() == []  # raised once per group and version
    monitor.mark(event, "rollback")
    (stored,) = degraded_events(store)
    assert (stored["model_id"], stored["version"], stored["devices"], stored["action"]) == (
        "m",
        2,
        ["dev-0", "dev-1"],
        "rollback",
    )
    assert stored["measure"] == "accuracy" and stored["reason"].startswith("accuracy 0.312")


def test_postgres_collectors_of_a_group_raise_a_degraded_group_once(postgres_url):
    """Each collector of a group runs the feedback monitor on the one database: the event is stored once, and only
    the monitor that stored it reports it (so only one rolls the group back)."""
    from edge.delivery.feedback import FeedbackConfig, FeedbackMonitor, degraded_events

    a, b = open_fleet_store(postgres_url), open_fleet_store(postgres_url)
    try:
        now = time.time()
        a.record_many(
            [(state_topic("dev-0"), state("dev-0", version=2, ts=now, lineage=lineage(3.0)), now)]
            + [(telemetry_topic("dev-0"), poor_telemetry("dev-0", seq, 2), now + seq) for seq in (1, 2, 3)]
        )
        config = FeedbackConfig(min_reports=3)
        first, second = FeedbackMonitor(a, config), FeedbackMonitor(b, config)
        second._raised = lambda: set()  # as if it checked before the other stored its event: a real race
        assert len(first.check()) == 1
        assert second.check() == []
        assert len(degraded_events(b)) == 1
    finally:
        a.close()
        b.close()


def test_postgres_keeps_the_lineage_of_the_newer_state_whichever_collector_writes_last(postgres_url):
    from edge.delivery.feedback import device_lineage

    a, b = open_fleet_store(postgres_url), open_fleet_store(postgres_url)
    try:
        now = time.time()
        a.record(state_topic("dev-0"), state("dev-0", version=2, ts=now + 1, lineage=lineage(4.0)), now + 1)
        b.record(state_topic("dev-0"), state("dev-0", version=1, ts=now, lineage=lineage(2.0)), now)  # lagging
        assert (device_lineage(b)["dev-0"]["version"], device_lineage(b)["dev-0"]["epsilon"]) == (2, 4.0)
        reader = open_fleet_store(postgres_url, read_only=True)
        try:
            assert device_lineage(reader)["dev-0"]["epsilon"] == 4.0
        finally:
            reader.close()
    finally:
        a.close()
        b.close()


def test_fleet_status_on_postgres_shows_epsilon_and_degraded_groups(postgres_url):
    from typer.testing import CliRunner

    from edge.delivery.feedback import FeedbackConfig, FeedbackMonitor
    from simulations.cli import app

    store = open_fleet_store(postgres_url)
    try:
        now = time.time()
        store.record_many(
            [(state_topic("dev-0"), state("dev-0", version=2, ts=now, lineage=lineage(2.75)), now)]
            + [(telemetry_topic("dev-0"), poor_telemetry("dev-0", seq, 2), now + seq) for seq in (1, 2, 3)]
        )
        assert len(FeedbackMonitor(store, FeedbackConfig(min_reports=3)).check()) == 1
    finally:
        store.close()
    result = CliRunner().invoke(app, ["fleet", "status", "--db", postgres_url], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "2.75" in result.output  # the device's model ε
    assert "degraded m v2 on 1 devices: accuracy 0.312" in result.output
    assert "3 received" in result.output


# ------------------------------------------------------------------------------ collectors as a group on Mosquitto


@pytest.fixture
def mosquitto(tmp_path):
    setup = write_mosquitto_files(tmp_path / "mosquitto", port=free_port(), devices=DEVICES)
    broker = MosquittoProcess(setup).start()
    yield broker
    broker.stop()


class Devices:
    """One paho connection per device (logged in as that device); publishes at QoS 1 and counts the PUBACKs."""

    def __init__(self, broker: MosquittoProcess) -> None:
        self.clients = {}
        self.acked = 0
        self._lock = threading.Lock()
        for d in DEVICES:
            address = broker.setup.address(d)
            client = make_client(d, address, clean_session=True, max_inflight=100)
            client.on_publish = self._on_publish
            client.connect(address.host, address.port)
            client.loop_start()
            self.clients[d] = client
        assert wait_for(lambda: all(c.is_connected() for c in self.clients.values()), 20)

    def _on_publish(self, *args) -> None:
        with self._lock:
            self.acked += 1

    def publish(self, device: str, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.clients[device].publish(topic, payload, qos=1, retain=retain)

    def close(self) -> None:
        for c in self.clients.values():
            c.disconnect()
            c.loop_stop()


@needs_mosquitto
def test_two_collectors_in_a_group_store_every_message_once_and_count_gaps(mosquitto, postgres_url):
    devices = Devices(mosquitto)
    for d in DEVICES:  # retained states: every member of the group gets them (how a new member learns the fleet)
        devices.publish(d, state_topic(d), state(d), retain=True)
    assert wait_for(lambda: devices.acked == len(DEVICES))
    server = mosquitto.setup.address(SERVER_USER)
    members = [collector_for(server, postgres_url, group="fleet", client_id=f"collector-{i}") for i in "ab"]
    try:
        for c in members:
            c.start()
        # both subscribed: each got every retained state (the same on_connect subscribes to the shared topics)
        assert all(wait_for(lambda c=c: c.received >= len(DEVICES), 20) for c in members)
        skipped = 7  # one sequence number per device never sent: a gap the store must count as lost
        sent = 0
        for seq in range(1, 301):
            for d in DEVICES:
                if seq != skipped:
                    devices.publish(d, telemetry_topic(d), telemetry_payload(d, seq))
                    sent += 1
        for d in DEVICES:
            devices.publish(d, events_topic(d), event(d))
        store = members[0].store
        assert wait_for(lambda: store.sequence_report()["received"] >= sent, 60)
        assert wait_for(lambda: len(store.events()) >= len(DEVICES), 20)
        report = store.sequence_report()
        assert report["received"] == sent
        assert report["lost"] == len(DEVICES)
        shares = [c.received - len(DEVICES) for c in members]
        assert all(share > 0 for share in shares), shares  # the broker shared the stream between them
        assert sum(shares) >= sent + len(DEVICES)  # each message to one member (plus any redelivery)
        assert len(store.events()) == len(DEVICES)
        assert {d["device_id"]: d["state"] for d in store.devices()} == dict.fromkeys(DEVICES, "ready")
    finally:
        for c in members:
            c.stop()
            c.store.close()
        devices.close()


def _collect(server_url: str, db: str, client_id: str) -> subprocess.Popen:
    """``fedge fleet collect --group fleet`` as its own process; returns once it is connected."""
    cmd = [sys.executable, "-m", "simulations.cli", "fleet", "collect", "--broker", server_url, "--db", db]
    cmd += ["--group", "fleet", "--client-id", client_id]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    line = proc.stdout.readline()
    if "collecting into" not in line or client_id not in line:
        proc.kill()
        raise AssertionError(f"the collector did not start: {line}{proc.stdout.read()}")
    return proc


@needs_mosquitto
def test_a_collector_killed_mid_stream_loses_nothing_acknowledged(mosquitto, postgres_url):
    """SIGKILL one of two collectors while the devices stream: what the broker acknowledged to the devices and had
    handed (or would hand) to the dead member waits in its persistent session, and arrives, each message stored
    once, when the member comes back under the same client id."""
    devices = Devices(mosquitto)
    server = mosquitto.setup.address(SERVER_USER).url(with_password=True)
    procs = [_collect(server, postgres_url, "collector-a"), _collect(server, postgres_url, "collector-b")]
    reader = open_fleet_store(postgres_url, read_only=True)
    try:
        total = 400 * len(DEVICES)

        def stream() -> None:
            for seq in range(1, 401):
                for d in DEVICES:
                    devices.publish(d, telemetry_topic(d), telemetry_payload(d, seq))
                time.sleep(0.002)

        sender = threading.Thread(target=stream)
        sender.start()
        assert wait_for(lambda: reader.sequence_report()["received"] >= total // 4, 60)
        procs[1].send_signal(signal.SIGKILL)  # mid-stream, without a word to the broker
        procs[1].wait(10)
        sender.join(120)
        assert wait_for(lambda: devices.acked == total, 60)  # the broker acknowledged every message
        # the dead member's share waits for it: not stored while it is away
        assert reader.sequence_report()["received"] < total
        procs[1] = _collect(server, postgres_url, "collector-b")  # back, same client id: its session's messages
        assert wait_for(lambda: reader.sequence_report()["received"] >= total, 60)
        report = reader.sequence_report()
        assert report["received"] == total and report["lost"] == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        reader.close()
        devices.close()


@needs_mosquitto
def test_a_collector_hears_a_message_sent_the_moment_its_first_start_returns(mosquitto, tmp_path):
    """A collector's first start has no session at the broker yet: until its subscriptions are confirmed, what a
    device sends goes to nobody. start() returns only after the SUBACK (before, 3 of 10 such collectors missed it)."""
    devices = Devices(mosquitto)
    missed = []
    try:
        server = mosquitto.setup.address(SERVER_USER)
        for i in range(10):
            collector = collector_for(server, str(tmp_path / f"first-{i}.db"), client_id=f"first-start-{i}").start()
            devices.publish("dev-0", telemetry_topic("dev-0"), telemetry_payload("dev-0", i + 1))
            if not wait_for(lambda c=collector: c.received >= 1, 5):
                missed.append(i)
            collector.stop()
    finally:
        devices.close()
    assert not missed, f"collectors that missed the message sent right after start(): {missed}"


@needs_mosquitto
def test_the_ingest_benchmarks_light_devices_are_mqtt_clients_the_broker_holds_to_their_acl(
    mosquitto, postgres_server, tmp_path
):
    """The collectors benchmark's devices (``--sender raw``) speak MQTT themselves: each logs in as its device,
    Mosquitto checks every publish against that device's ACL, and the two collectors of a group store every message
    with no gap. A device that publishes on another's topic is not stored (a broker that let it through would make
    the benchmark count messages no real device could send)."""
    import argparse
    import socket

    from simulations.benchmarks.mqtt_telemetry import measure_collectors, mqtt_connect, mqtt_publish

    args = argparse.Namespace(devices=4, processes=2, messages=100, timeout=60.0, sender="raw")
    result = measure_collectors("postgres", 2, args, tmp_path / "run", postgres_server)
    assert result["sent"] == 400 and result["stored"] == 400 and result["lost"] == 0
    # every part's CPU is reported; it is counted in 10 ms ticks per process, so only the collectors' ~40 ms for 400
    # messages is sure to show (the broker's ~10 ms and the light senders' 1-2 ms may round to none)
    assert {"collectors", "senders", "broker", "postgresql"} <= set(result["cpu_seconds"])
    assert result["cpu_seconds"]["collectors"] > 0

    # the same encoder, as dev-0: its own telemetry is stored; a message on dev-1's topic, between two of its own,
    # is not
    collector = collector_for(mosquitto.setup.address(SERVER_USER), str(tmp_path / "acl.db"), client_id="acl")
    try:
        collector.start()
        address = mosquitto.setup.address("dev-0")

        def publish(sock, device: str, seq: int) -> None:
            sock.sendall(mqtt_publish(telemetry_topic(device), seq, telemetry_payload(device, seq)))

        with socket.create_connection((address.host, address.port), timeout=10) as sock:
            sock.sendall(mqtt_connect("raw-dev-0", address.username, address.password))
            assert sock.recv(4)[3] == 0  # CONNACK: accepted
            publish(sock, "dev-0", 1)  # start() returned once subscribed: heard at once
            assert wait_for(lambda: collector.received >= 1, 20)
            publish(sock, "dev-1", 1)  # forged: dev-0 is not allowed to write there
            publish(sock, "dev-0", 2)  # one connection is delivered in order: this comes after the forged one
            assert wait_for(lambda: collector.store.sequence_report()["received"] >= 2, 20)
        assert [d["device_id"] for d in collector.store.devices()] == ["dev-0"]
        assert collector.store.sequence_report()["received"] == 2  # seq 1 and 2 of dev-0, nothing of dev-1
    finally:
        collector.stop()

"""Edge delivery over real brokers: Mosquitto (password file, ACL, persistence) and the embedded amqtt broker.

Every broker and agent a test starts is stopped by its fixture's finalizer. No assertion is on wall-clock time;
waits are bounded by timeouts.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edge.agent.config import AgentConfig
from edge.agent.protocol import BrokerAddress
from edge.agent.service import AgentService
from edge.delivery.brokers import EmbeddedBrokerProcess, free_port
from edge.delivery.client import ServerClient
from edge.delivery.collector import FleetCollector, FleetStore
from edge.delivery.errors import BrokerError
from edge.delivery.keys import SigningKey
from edge.delivery.mosquitto import SERVER_USER, MosquittoProcess, mosquitto_binary, write_mosquitto_files
from edge.delivery.publisher import Artifact, ModelPublisher, sign_artifact
from edge.delivery.rollout import RolloutPolicy, StagedRollout
from tests.edge.helpers import onnx_model, signing_key, write_public_key, write_samples

pytestmark = pytest.mark.integration

DEVICES = ["dev-a", "dev-b", "dev-c", "intruder"]
FAST = RolloutPolicy(canary_fraction=0.34, health_reports=2, apply_timeout_s=30, health_timeout_s=30)


def have_mosquitto() -> bool:
    try:
        mosquitto_binary()
        return True
    except BrokerError:
        return False


needs_mosquitto = pytest.mark.skipif(not have_mosquitto(), reason="mosquitto is not installed (.ci/run installs it)")


def wait_for(predicate, timeout: float = 30.0, poll: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll)
    return predicate()


def model(version: int, *, bad: bool = False, chunk_size: int = 512):
    art = Artifact(Path("m.onnx"), onnx_model(bad=bad), "digits", version, "onnx", {"accuracy": 0.9})
    return sign_artifact(art, signing_key(), chunk_size=chunk_size, targets=tuple(DEVICES))


@pytest.fixture
def mosquitto(tmp_path):
    setup = write_mosquitto_files(tmp_path / "mosquitto", port=free_port(), devices=DEVICES)
    broker = MosquittoProcess(setup).start()
    yield broker
    broker.stop()


@pytest.fixture
def embedded():
    broker = EmbeddedBrokerProcess(free_port()).start(timeout=30)
    yield broker
    broker.stop()


@pytest.fixture
def env(tmp_path):
    """Agents, a collector and a publisher on a broker, all stopped at the end."""
    started: list = []
    samples = write_samples(tmp_path / "samples.npz")
    pub = write_public_key(signing_key(), tmp_path / "server.pub")

    class Env:
        def address(self, broker, user: str) -> BrokerAddress:
            if isinstance(broker, MosquittoProcess):
                return broker.setup.address(user)
            return broker.address()

        def agent(self, broker, device_id: str, runtime: str = "onnx") -> AgentService:
            config = AgentConfig(
                device_id=device_id,
                broker=self.address(broker, device_id),
                store=tmp_path / "stores" / device_id,
                model_ids=("digits",),
                runtime=runtime,
                trusted_keys=(pub,),
                data=samples,
                report_interval_s=0.3,
                samples_per_report=20,
            )
            service = AgentService(config).start()
            started.append(service.stop)
            return service

        def collector(self, broker, db: str = "fleet.db") -> FleetCollector:
            collector = FleetCollector(self.address(broker, SERVER_USER), FleetStore(tmp_path / db)).start()
            started.append(collector.stop)
            return collector

        def publisher(self, broker, name: str = "fedge-publisher") -> ModelPublisher:
            client = ServerClient(name, self.address(broker, SERVER_USER)).connect()
            started.append(client.close)
            return ModelPublisher(client, signing_key(), timeout=30)

    yield Env()
    for stop in reversed(started):
        stop()


def rollout(env_, broker, collector, m, devices, policy=FAST):
    return StagedRollout(
        publisher=env_.publisher(broker, f"pub-{m.manifest.version}"),
        collector=collector,
        models={m.manifest.format: m},
        policy=policy,
    ).run(devices)


def all_on(collector, devices, version) -> bool:
    return all((collector.store.device(d) or {}).get("version") == version for d in devices)


@needs_mosquitto
def test_staged_rollout_to_several_agents_on_mosquitto(mosquitto, env):
    collector = env.collector(mosquitto)
    devices = ["dev-a", "dev-b", "dev-c"]
    for d in devices:
        env.agent(mosquitto, d)
    assert collector.wait_until(lambda s: len(s.devices()) == 3, 20)
    first = rollout(env, mosquitto, collector, model(1), devices, RolloutPolicy(canary_fraction=0, apply_timeout_s=30))
    assert first.status == "completed" and sorted(first.applied) == devices
    assert collector.wait_until(lambda s: all(s.reports_since(d, 1, 0) >= 2 for d in devices), 20)

    second = rollout(env, mosquitto, collector, model(2), devices)
    assert second.status == "completed", second
    assert len(second.canaries) == 2 and sorted(second.applied) == devices
    assert second.baseline["accuracy"] > 0.7 and second.canary_stats["accuracy"] > 0.7
    assert collector.wait_until(lambda s: all_on(collector, devices, 2), 10)
    row = collector.store.device("dev-a")
    assert row["state"] == "ready" and row["previous_version"] == 1


@needs_mosquitto
def test_canary_worse_than_previous_version_is_rolled_back(mosquitto, env):
    collector = env.collector(mosquitto)
    devices = ["dev-a", "dev-b", "dev-c"]
    agents = {d: env.agent(mosquitto, d) for d in devices}
    assert collector.wait_until(lambda s: len(s.devices()) == 3, 20)
    assert rollout(env, mosquitto, collector, model(1), devices, RolloutPolicy(canary_fraction=0)).status == "completed"
    assert collector.wait_until(lambda s: all(s.reports_since(d, 1, 0) >= 2 for d in devices), 20)

    report = rollout(env, mosquitto, collector, model(2, bad=True), devices)
    assert report.status == "rolled-back", report
    assert "accuracy" in report.verdict
    assert sorted(report.rolled_back) == sorted(report.canaries)
    for d in devices:  # canaries back on v1; the others never got v2
        assert agents[d].agent.version == 1
    assert all_on(collector, devices, 1) or collector.wait_until(lambda s: all_on(collector, devices, 1), 10)


ATTACKS = {
    "tampered-chunk": lambda m: (m.envelope, [(t, p[:-1] + bytes([p[-1] ^ 1]), r) for t, p, r in m.chunk_messages()]),
    "unknown-signer": lambda m: (
        sign_artifact(m.artifact, SigningKey.generate()).envelope,
        [],
    ),
    "malformed": lambda m: (b'{"signed": [1, 2', []),
    "unsigned": lambda m: (json.dumps({"signed": m.manifest.to_signed(), "signatures": []}).encode(), []),
}


@needs_mosquitto
@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attack_over_the_broker_is_rejected_and_the_old_model_keeps_serving(mosquitto, env, attack):
    collector = env.collector(mosquitto)
    agent = env.agent(mosquitto, "dev-a")
    publisher = env.publisher(mosquitto)
    publisher.publish_chunks(model(1))
    publisher.assign(model(1), ["dev-a"])
    assert wait_for(lambda: agent.agent.version == 1)
    envelope, chunks = ATTACKS[attack](model(2, chunk_size=1024))
    publisher.client.publish_all(chunks)
    publisher.client.publish_all([("fedge/v1/devices/dev-a/manifest", envelope, True)])
    assert collector.wait_until(
        lambda s: any(e["outcome"] == "rejected" and e["reason"] == attack for e in s.events("dev-a")), 20
    ), collector.store.events("dev-a")
    assert agent.agent.version == 1 and agent.thread.is_alive()
    since = time.time()
    assert collector.wait_until(lambda s: s.reports_since("dev-a", 1, since) >= 2, 20)  # still serving, reporting


@needs_mosquitto
def test_acl_a_device_cannot_publish_to_another_devices_or_model_topics(mosquitto, env):
    seen: list[tuple[str, bytes]] = []
    watcher = ServerClient(
        "watcher",
        mosquitto.setup.address(SERVER_USER),
        subscriptions=("fedge/#",),
        on_message=lambda t, p: seen.append((t, p)),
        clean_session=True,
    ).connect()
    try:
        intruder = ServerClient("intruder", mosquitto.setup.address("intruder"), clean_session=True).connect()
        try:
            forged = [
                ("fedge/v1/devices/dev-a/telemetry", b'{"forged": 1}', False),
                ("fedge/v1/devices/dev-a/state", b'{"forged": 2}', True),
                ("fedge/v1/devices/dev-a/manifest", b'{"forged": 3}', True),
                ("fedge/v1/devices/dev-a/cmd/rollback", b'{"forged": 4}', False),
                ("fedge/v1/models/digits/9/onnx/0", b"forged-chunk", True),
                ("fedge/v1/devices/intruder/telemetry", b'{"own": "marker"}', False),  # allowed: its own topic
            ]
            intruder.publish_all(forged)
            # The marker, published last on the same connection at the same QoS, is the barrier: the broker delivers
            # one client's messages in order, so a forged message that got through would have arrived before it.
            assert wait_for(lambda: any(t == "fedge/v1/devices/intruder/telemetry" for t, _ in seen), 10)
            assert not any(b"forged" in payload for _, payload in seen)
        finally:
            intruder.close()
    finally:
        watcher.close()


@needs_mosquitto
def test_a_device_cannot_log_in_with_a_wrong_password(mosquitto):
    address = mosquitto.setup.address("dev-a")
    wrong = BrokerAddress(address.host, address.port, username="dev-a", password="guess")
    with pytest.raises(BrokerError, match="refused"):
        ServerClient("dev-a", wrong).connect(timeout=10)


@needs_mosquitto
def test_broker_restart_mid_rollout_and_telemetry_loses_nothing(mosquitto, env):
    collector = env.collector(mosquitto)
    devices = ["dev-a", "dev-b"]
    agents = {d: env.agent(mosquitto, d) for d in devices}
    publisher = env.publisher(mosquitto)
    publisher.publish_chunks(model(1))
    publisher.assign(model(1), devices)
    assert collector.wait_until(lambda s: all(s.reports_since(d, 1, 0) >= 2 for d in devices), 30)

    v2 = model(2, chunk_size=256)
    publisher.publish_chunks(v2)
    mosquitto.stop()  # mid-rollout: chunks are out, the manifests are not yet
    assigning = threading.Thread(target=publisher.assign, args=(v2, devices))
    assigning.start()  # queued by paho until the broker is back
    # agents keep measuring; their telemetry waits in their buffers
    assert wait_for(lambda: any(len(a.agent.outbox) for a in agents.values()), 10)
    mosquitto.start()
    assigning.join(30)
    assert not assigning.is_alive()
    assert wait_for(lambda: all(a.agent.version == 2 for a in agents.values()), 30)
    restarted = time.time()
    assert collector.wait_until(lambda s: all(s.reports_since(d, 2, restarted) >= 2 for d in devices), 30)
    report = collector.store.sequence_report()
    assert report["lost"] == 0, report
    assert report["received"] >= 8


def test_rollout_on_the_embedded_broker_with_agent_processes(embedded, env, tmp_path):
    """The demo's set-up: amqtt as its own process, agents as `python -m edge.agent` processes, both runtimes."""
    pytest.importorskip("ai_edge_litert")
    from tests.edge.helpers import tflite_model

    collector = env.collector(embedded)
    pub = write_public_key(signing_key(), tmp_path / "server.pub")
    samples = write_samples(tmp_path / "samples.npz")
    runtimes = {"dev-a": "onnx", "dev-b": "onnx", "dev-c": "tflite"}
    procs = []
    try:
        for d, runtime in runtimes.items():
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "edge.agent",
                        "--broker",
                        f"mqtt://127.0.0.1:{embedded.port}",
                        "--device-id",
                        d,
                        "--store",
                        str(tmp_path / d),
                        "--runtime",
                        runtime,
                        "--model-id",
                        "digits",
                        "--trust",
                        str(pub),
                        "--data",
                        str(samples),
                        "--interval",
                        "0.3",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
            )
        assert collector.wait_until(lambda s: len(s.devices()) == 3, 60), collector.store.devices()
        models = {"onnx": model(1)}
        art = Artifact(Path("m.tflite"), tflite_model(), "digits", 1, "tflite", {})
        models["tflite"] = sign_artifact(art, signing_key(), chunk_size=1024)
        report = StagedRollout(
            publisher=env.publisher(embedded),
            collector=collector,
            models=models,
            policy=RolloutPolicy(canary_fraction=0, apply_timeout_s=60),
        ).run()
        assert report.status == "completed", report
        assert collector.wait_until(lambda s: all(s.reports_since(d, 1, 0) >= 1 for d in runtimes), 30)
        rows = {r["device_id"]: r for r in collector.store.devices()}
        assert rows["dev-c"]["runtime"] == "tflite" and rows["dev-c"]["accuracy"] > 0.7
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p.stderr:
                p.stderr.close()
    assert collector.wait_until(lambda s: all(r["state"] in ("disconnected", "lost") for r in s.devices()), 10), (
        collector.store.devices()
    )


@needs_mosquitto
def test_fedge_publish_and_fleet_status_on_mosquitto(mosquitto, env, tmp_path):
    """The commands a person runs: `fedge keygen`, agents trusting its key, `fedge publish`, `fedge fleet status`."""
    from typer.testing import CliRunner

    from simulations.cli import app

    runner = CliRunner()
    assert runner.invoke(app, ["keygen", str(tmp_path / "keys" / "server")]).exit_code == 0
    collector = env.collector(mosquitto)
    devices = ["dev-a", "dev-b", "dev-c"]
    agents = {}
    for d in devices:
        config = AgentConfig(
            device_id=d,
            broker=mosquitto.setup.address(d),
            store=tmp_path / "cli-stores" / d,
            model_ids=("digits",),
            trusted_keys=(tmp_path / "keys" / "server.pub",),
            data=write_samples(tmp_path / "samples.npz"),
            report_interval_s=0.3,
            samples_per_report=20,
        )
        agents[d] = AgentService(config).start()
    try:
        assert collector.wait_until(lambda s: len(s.devices()) == 3, 20)
        (tmp_path / "digits.onnx").write_bytes(onnx_model())
        server_url = mosquitto.setup.address(SERVER_USER).url(with_password=True)
        common = [
            "--broker",
            server_url,
            "--key",
            str(tmp_path / "keys" / "server.key"),
            "--db",
            str(tmp_path / "p.db"),
            "--accept-site-drop",  # a bare model file, never tested on sites: the override, recorded
        ]
        first = runner.invoke(
            app, ["publish", str(tmp_path / "digits.onnx"), *common, "--version", "1", "--canary", "0"]
        )
        assert first.exit_code == 0, first.output
        assert "completed" in first.output
        assert "accept-site-drop: digits.onnx has no acceptance report" in first.output
        assert wait_for(lambda: all(a.agent.version == 1 for a in agents.values()), 10)
        assert collector.wait_until(lambda s: all(s.reports_since(d, 1, 0) >= 2 for d in devices), 20)
        second = runner.invoke(
            app, ["publish", str(tmp_path / "digits.onnx"), *common, "--version", "2", "--canary", "0.3"]
        )
        assert second.exit_code == 0, second.output
        assert "canaries healthy" in second.output
        assert all(a.agent.version == 2 for a in agents.values())
        status = runner.invoke(app, ["fleet", "status", "--db", str(tmp_path / "p.db"), "--broker", server_url])
        assert status.exit_code == 0, status.output
        rows = [line for line in status.output.splitlines() if line.strip().startswith("dev-")]
        assert len(rows) == 3 and all(" 2 " in r and "ready" in r for r in rows), status.output
    finally:
        for a in agents.values():
            a.stop()


@needs_mosquitto
def test_rollout_over_tls_and_a_client_without_the_ca_is_refused(tmp_path):
    """Mosquitto with a TLS listener (plus password file and ACL): the agent and the server verify the broker's
    certificate against the CA; a client that does not trust that CA never connects."""
    from tests.edge.helpers import write_tls_files

    ca, cert, key = write_tls_files(tmp_path / "tls")
    setup = write_mosquitto_files(
        tmp_path / "mosquitto", port=free_port(), devices=["dev-a"], tls_files=(ca, cert, key)
    )
    broker = MosquittoProcess(setup).start()
    started = []
    try:
        server = setup.address(SERVER_USER)
        assert server.tls and server.url().startswith("mqtts://")
        with pytest.raises(BrokerError):
            ServerClient("no-ca", server, clean_session=True).connect(timeout=5)  # the system CAs do not know it
        collector = FleetCollector(server, FleetStore(tmp_path / "fleet.db"), ca_file=ca).start()
        started.append(collector.stop)
        agent = AgentService(
            AgentConfig(
                device_id="dev-a",
                broker=setup.address("dev-a"),
                store=tmp_path / "store",
                model_ids=("digits",),
                trusted_keys=(write_public_key(signing_key(), tmp_path / "server.pub"),),
                data=write_samples(tmp_path / "samples.npz"),
                report_interval_s=0.3,
                ca_file=ca,
            )
        ).start()
        started.append(agent.stop)
        client = ServerClient("tls-publisher", server, ca_file=ca).connect()
        started.append(client.close)
        publisher = ModelPublisher(client, signing_key(), timeout=30)
        publisher.publish_chunks(model(1))
        publisher.assign(model(1), ["dev-a"])
        assert wait_for(lambda: agent.agent.version == 1, 20)
        assert collector.wait_until(lambda s: s.reports_since("dev-a", 1, 0) >= 2, 20)
    finally:
        for stop in reversed(started):
            stop()
        broker.stop()


@needs_mosquitto
@pytest.mark.parametrize("read_size", [100, 65536])
def test_collector_stores_a_telemetry_burst_once_through_buffered_reads(mosquitto, env, monkeypatch, read_size):
    """The collector reads its socket in blocks (BufferedReadClient): every message of a burst is stored exactly
    once whether packets straddle the blocks (100 bytes: every ~450-byte message does) or many fit in one, and the
    large blocks really save reads (far fewer recv calls than messages)."""
    import paho.mqtt.client as mqtt

    from edge.agent.link import BufferedReadClient
    from edge.agent.protocol import telemetry_topic

    monkeypatch.setattr(BufferedReadClient, "READ_SIZE", read_size)
    socket_reads = {"collector": 0}
    plain_recv = mqtt.Client._sock_recv

    def counting_recv(self, bufsize):
        if isinstance(self, BufferedReadClient):
            socket_reads["collector"] += 1
        return plain_recv(self, bufsize)

    monkeypatch.setattr(mqtt.Client, "_sock_recv", counting_recv)
    collector = env.collector(mosquitto)
    n = 1500
    messages = []
    for device in ("dev-a", "dev-b"):
        for seq in range(1, n + 1):
            body = {"type": "telemetry", "device_id": device, "session": "s", "seq": seq, "ts": time.time()}
            body.update(inferences=10, errors=0, labelled=10, correct=9, latency_ms_p50=0.4, histogram=[1] * 10)
            body["pad"] = "x" * 300
            messages.append((device, json.dumps(body).encode()))
    senders = {
        d: ServerClient(f"burst-{d}", env.address(mosquitto, d), clean_session=True).connect() for d in DEVICES[:2]
    }
    try:
        for device, client in senders.items():
            client.publish_all([(telemetry_topic(device), p, False) for d, p in messages if d == device], timeout=60)
    finally:
        for client in senders.values():
            client.close()
    assert wait_for(lambda: collector.received >= 2 * n, timeout=60), f"stored {collector.received} of {2 * n}"
    report = collector.store.sequence_report()
    assert report == {"received": 2 * n, "lost": 0, "duplicates": 0}
    assert collector.store.malformed() == []
    if read_size == 65536:
        assert socket_reads["collector"] < n / 2, socket_reads  # at least ~3 reads per message unbuffered
    else:
        assert socket_reads["collector"] > 2 * n * 4  # each ~450-byte message took several 100-byte reads


# ------------------------------------------------------------------------------------------------ issue 10 attacks


@needs_mosquitto
def test_session_takeover_with_another_devices_client_id_is_impossible(mosquitto, env):
    """dev-b's credentials connecting with dev-a's client id: Mosquitto (fedge's config) replaces the client id by
    the user name, so dev-a's session is neither wiped nor disconnected, and dev-a still takes its updates."""
    agent = env.agent(mosquitto, "dev-a")
    assert wait_for(lambda: agent.transport.connected, 20)
    drops: list[int] = []
    agent.transport.client.on_disconnect = lambda *a: (drops.append(1), agent.transport._connected.clear())
    intruder = ServerClient("dev-a", mosquitto.setup.address("dev-b"), clean_session=True).connect()
    try:
        publisher = env.publisher(mosquitto)
        publisher.publish_chunks(model(1))
        publisher.assign(model(1), ["dev-a"])
        assert wait_for(lambda: agent.agent.version == 1, 20)
        assert intruder.connected and not drops
    finally:
        intruder.close()


@needs_mosquitto
def test_mix_and_match_copied_manifest_over_the_broker_is_refused(mosquitto, env):
    collector = env.collector(mosquitto)
    agents = {d: env.agent(mosquitto, d) for d in ("dev-a", "dev-b")}
    publisher = env.publisher(mosquitto)
    publisher.publish_chunks(model(1))
    publisher.assign(model(1), ["dev-a", "dev-b"])
    assert wait_for(lambda: all(a.agent.version == 1 for a in agents.values()), 20)
    v2 = model(2)
    publisher.publish_chunks(v2)
    copied = v2.addressed(signing_key(), ["dev-a"]).envelope  # dev-a's canary manifest, copied to dev-b's topic
    publisher.client.publish_all([("fedge/v1/devices/dev-b/manifest", copied, True)])
    assert collector.wait_until(lambda s: any(e["reason"] == "not-addressed" for e in s.events("dev-b")), 20), (
        collector.store.events("dev-b")
    )
    assert agents["dev-b"].agent.version == 1
    publisher.assign(v2, ["dev-b"])  # and its own manifest still goes through
    assert wait_for(lambda: agents["dev-b"].agent.version == 2, 20)


@needs_mosquitto
def test_rollout_without_a_baseline_is_held_not_passed(mosquitto, env, tmp_path):
    """The previous version's reports were never collected (a fresh fleet database): the canary check holds."""
    devices = ["dev-a", "dev-b", "dev-c"]
    agents = {d: env.agent(mosquitto, d) for d in devices}
    publisher = env.publisher(mosquitto)
    publisher.publish_chunks(model(1))
    publisher.assign(model(1), devices)
    assert wait_for(lambda: all(a.agent.version == 1 for a in agents.values()), 20)
    collector = env.collector(mosquitto, db="late.db")  # starts only now: it never saw v1's telemetry
    assert collector.wait_until(lambda s: len(s.devices()) == 3, 20)
    report = rollout(env, mosquitto, collector, model(2), devices)
    assert report.status == "held", report
    assert "no baseline" in report.verdict and report.overrides == []
    rest = [d for d in devices if d not in report.canaries]
    assert all(agents[d].agent.version == 1 for d in rest)  # nobody else got it
    override = RolloutPolicy(**{**FAST.__dict__, "accept_no_baseline": True})
    report = rollout(env, mosquitto, collector, model(3), devices, override)
    assert report.status == "completed", report
    assert report.overrides and report.overrides[0].startswith("accept-no-baseline")


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


JUNK_FLOOD_BOUND_KIB = 32 * 1024  # what the flood may add to the agent's peak RSS


@needs_mosquitto
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_junk_topic_flood_keeps_the_agent_process_memory_bounded(mosquitto, env, tmp_path):
    """20,000 distinct long topics under the agent's own command topic, with 1 KiB junk payloads, into a real
    `python -m edge.agent` process (password from the environment): its peak memory grows by less than the bound,
    and it still takes a good update."""
    import os

    address = mosquitto.setup.address("dev-a")
    pub = write_public_key(signing_key(), tmp_path / "server.pub")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge.agent", "--broker", f"mqtt://dev-a@127.0.0.1:{address.port}", "--device-id",
         "dev-a", "--store", str(tmp_path / "dev-a"), "--model-id", "digits", "--trust", str(pub)],
        env={**os.environ, "FEDGE_BROKER_PASSWORD": address.password},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        collector = env.collector(mosquitto)
        publisher = env.publisher(mosquitto)
        publisher.publish_chunks(model(1))
        publisher.assign(model(1), ["dev-a"])
        assert collector.wait_until(lambda s: (s.device("dev-a") or {}).get("version") == 1, 60)
        before = _peak_rss_kib(proc.pid)
        assert "dev-a" in " ".join(Path(f"/proc/{proc.pid}/cmdline").read_text().split("\0"))
        assert address.password not in Path(f"/proc/{proc.pid}/cmdline").read_text()
        junk = os.urandom(1024)
        for start in range(0, 20_000, 2000):
            publisher.client.publish_all(
                [(f"fedge/v1/devices/dev-a/cmd/x{i}-" + "y" * 200, junk, False) for i in range(start, start + 2000)]
            )
        since = time.time()
        publisher.client.publish_all([("fedge/v1/devices/dev-a/cmd/flood-end", b"end", False)])
        assert collector.wait_until(
            lambda s: any("flood-end" in (e.get("detail") or "") for e in s.events("dev-a", since=since - 60)), 120
        )
        after = _peak_rss_kib(proc.pid)
        print(f"agent peak RSS: {before / 1024:.1f} MiB before the flood, {after / 1024:.1f} MiB after")
        assert after - before < JUNK_FLOOD_BOUND_KIB, (before, after)
        publisher.publish_chunks(model(2))
        publisher.assign(model(2), ["dev-a"])
        assert collector.wait_until(lambda s: (s.device("dev-a") or {}).get("version") == 2, 60)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()

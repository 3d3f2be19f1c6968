"""Issue 13 in the fleet, on a real Mosquitto: ``fedge inspect DEVICE --broker`` reads the lineage and privacy
statement from the device's retained state (the same block the fleet database gives), says so when there is none
(exit 1) or no broker (exit 2); ``fedge fleet collect`` judges the field with the feedback settings it is given.
Every wait has a deadline; no assertion on wall-clock time."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time

import pytest

from edge.agent.link import make_client
from edge.agent.protocol import lost_message, state_message, state_topic, telemetry_topic
from edge.delivery.brokers import free_port
from edge.delivery.collector import FleetCollector, FleetStore
from edge.delivery.mosquitto import SERVER_USER, MosquittoProcess, write_mosquitto_files
from simulations.benchmarks.mqtt_telemetry import telemetry_payload
from tests.integration.test_edge_delivery import needs_mosquitto, wait_for

pytestmark = [pytest.mark.integration, needs_mosquitto]

DEVICES = ["dev-0", "dev-1", "dev-2"]
LINEAGE = {
    "run-id": "r1",
    "acceptance": {"verdict": "accepted", "worst-site-drop": 0.0, "accuracy-min": 0.95},
    "privacy": {"epsilon-max": 2.5, "delta": 1e-5},
}


@pytest.fixture
def broker(tmp_path):
    setup = write_mosquitto_files(tmp_path / "mosquitto", port=free_port(), devices=DEVICES)
    process = MosquittoProcess(setup).start()
    yield process
    process.stop()


def fedge(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "simulations.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def publish_as(broker: MosquittoProcess, device: str, messages: list[tuple[str, bytes, bool]]) -> None:
    """Publish (topic, payload, retain) as ``device`` logged in on the devices' listener; wait for every PUBACK."""
    address = broker.setup.address(device)
    client = make_client(device, address, clean_session=True)
    client.connect(address.host, address.port)
    client.loop_start()
    try:
        infos = [client.publish(t, p, qos=1, retain=r) for t, p, r in messages]
        assert wait_for(lambda: all(i.is_published() for i in infos), 20)
    finally:
        client.disconnect()
        client.loop_stop()


def state(device: str, *, version: int = 2, lineage: dict | None = LINEAGE) -> bytes:
    msg = state_message(
        device_id=device, state="ready", runtime="onnx", session="s1", ts=time.time(), model_id="m",
        version=version, lineage=lineage,
    )  # fmt: skip
    return json.dumps(msg).encode()


def server_url(broker: MosquittoProcess) -> str:
    return broker.setup.address(SERVER_USER).url(with_password=True)


def test_inspect_reads_the_devices_lineage_from_its_retained_state_as_the_fleet_db_has_it(broker, tmp_path):
    publish_as(broker, "dev-0", [(state_topic("dev-0"), state("dev-0"), True)])
    out = fedge("inspect", "dev-0", "--broker", server_url(broker))
    assert out.returncode == 0, out.stderr
    block = json.loads(out.stdout)
    assert block["device_id"] == "dev-0" and (block["model_id"], block["version"]) == ("m", 2)
    assert block["epsilon"] == 2.5 and block["lineage"]["acceptance"]["accuracy-min"] == 0.95
    # the fleet database, filled by a collector from the same retained state, gives the same block
    db = tmp_path / "fleet.db"
    collector = FleetCollector(broker.setup.address(SERVER_USER), FleetStore(db), clean_session=True).start()
    try:
        assert collector.wait_until(lambda s: "dev-0" in s.device_states(), 20)
    finally:
        collector.stop()
        collector.store.close()
    from_db = fedge("inspect", "dev-0", "--db", str(db))
    assert from_db.returncode == 0, from_db.stderr
    assert json.loads(from_db.stdout) == block


def test_inspect_of_a_device_with_no_retained_state_says_so_with_exit_code_1(broker):
    out = fedge("inspect", "dev-1", "--broker", server_url(broker), "--wait", "1")
    assert out.returncode == 1, out.stdout + out.stderr
    message = " ".join(out.stderr.split())
    assert "no retained state of device dev-1" in message and "Traceback" not in out.stderr
    # a device that dropped off: its retained state is the last will, which names no model
    lost = json.dumps(lost_message("dev-2", "onnx", "s1")).encode()
    publish_as(broker, "dev-2", [(state_topic("dev-2"), lost, True)])
    out = fedge("inspect", "dev-2", "--broker", server_url(broker))
    assert out.returncode == 1
    assert "dev-2 is lost" in " ".join(out.stderr.split()) and "--db" in out.stderr


def test_inspect_without_a_broker_is_one_clear_line_and_exit_code_2():
    out = fedge("inspect", "dev-0", "--broker", f"127.0.0.1:{free_port()}")
    assert out.returncode == 2
    assert "cannot reach the broker" in " ".join(out.stderr.split()) and "Traceback" not in out.stderr


def test_fleet_collect_judges_the_field_with_the_feedback_settings_it_is_given(broker, tmp_path):
    """With --feedback-min-reports 1 one poor report is enough (the default needs 3), and --feedback-interval 0.2
    has it judged within moments (the default checks every 10 s)."""
    cmd = [sys.executable, "-m", "simulations.cli", "fleet", "collect", "--broker", server_url(broker)]
    cmd += ["--db", str(tmp_path / "fleet.db"), "--client-id", "collector-t"]
    cmd += ["--feedback-min-reports", "1", "--feedback-interval", "0.2"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()

    def next_line_with(text: str, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if text in line:
                return line
        return None

    try:
        assert next_line_with("collecting into", 60) is not None
        poor = json.loads(telemetry_payload("dev-0", 1, model_id="m"))
        poor.update(correct=10, accuracy=10 / 32)  # 10 of 32 right, against 0.95 on the worst site at acceptance
        publish_as(
            broker,
            "dev-0",
            [
                (state_topic("dev-0"), state("dev-0"), True),
                (telemetry_topic("dev-0"), json.dumps(poor).encode(), False),
            ],
        )
        line = next_line_with("degraded", 30)
        assert line is not None and "m v2" in line and "accuracy 0.312" in line
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

"""Telemetry ingest over loopback at QoS 1: how many device messages per second reach the fleet database, and how
many are lost.

- Senders: ``--processes`` processes, each holding ``--devices / --processes`` device connections (paho-mqtt, one
  client per device, logged in as that device where the broker checks it). Every device publishes ``--messages``
  telemetry messages (the agent's own format, about 400 bytes, sequence numbers 1..N) at QoS 1 as fast as its
  client allows (up to 100 unacknowledged), then waits for every PUBACK.
- Receiver: the real fleet collector (:class:`edge.delivery.collector.FleetCollector`: one paho client, persistent
  session, QoS 1) writing every message to SQLite.
- Timed from the moment every sender is told to go until the collector has stored the last message; lost = sent
  minus stored, and the gaps in the sequence numbers the database holds (they must agree).
- Brokers: Mosquitto from the config fedge writes (password file, ACL, persistence) and the embedded amqtt broker
  as its own process.

    python -m simulations.benchmarks.mqtt_telemetry [--devices 100] [--processes 4] [--messages 200] [--broker both]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from simulations.benchmarks.common import Row, loopback_broker, write_results


def telemetry_payload(device: str, seq: int) -> bytes:
    return json.dumps(
        {
            "type": "telemetry",
            "device_id": device,
            "session": "bench",
            "seq": seq,
            "ts": round(time.time(), 3),
            "model_id": "mnist-cnn",
            "version": 2,
            "runtime": "onnx",
            "window_s": 2.0,
            "inferences": 32,
            "errors": 0,
            "latency_ms_p50": 0.4123,
            "latency_ms_p95": 0.6011,
            "mean_confidence": 0.93112,
            "histogram": [3, 4, 3, 3, 4, 3, 3, 3, 3, 3],
            "labelled": 32,
            "correct": 31,
            "accuracy": 0.96875,
            "dropped": 0,
        },
        separators=(",", ":"),
    ).encode()


# ---------------------------------------------------------------------------------------------------- worker


def worker(args: argparse.Namespace) -> int:
    """Connect one client per device, say "ready", wait for "go", publish, wait for every PUBACK, say "done S"."""
    from edge.agent.protocol import BrokerAddress, telemetry_topic
    from edge.delivery.client import ServerClient

    credentials = json.loads(Path(args.credentials).read_text())
    devices = args.devices.split(",")
    clients = {
        d: ServerClient(
            f"bench-{d}", BrokerAddress.parse(credentials[d]), clean_session=True, max_inflight=100
        ).connect()
        for d in devices
    }
    payloads = {
        d: [(telemetry_topic(d), telemetry_payload(d, s), False) for s in range(1, args.messages + 1)] for d in devices
    }
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1
    start = time.perf_counter()
    pending: dict[str, set[int]] = {d: set() for d in devices}
    for i in range(args.messages):  # interleave the devices, as a fleet sends
        for d in devices:
            topic, payload, _ = payloads[d][i]
            pending[d].add(clients[d].publish(topic, payload).mid)
    for d, c in clients.items():
        c.wait_for_acks(pending[d], timeout=args.timeout)
    print(f"done {time.perf_counter() - start:.4f}", flush=True)
    for c in clients.values():
        c.close()
    return 0


# ---------------------------------------------------------------------------------------------------- driver


def measure(kind: str, args: argparse.Namespace, work: Path) -> dict:
    from edge.delivery.collector import FleetCollector, FleetStore

    work.mkdir(parents=True)
    devices = [f"tel-{i:03d}" for i in range(args.devices)]
    broker, server = loopback_broker(kind, work, devices)
    broker.start(timeout=30)
    procs: list[subprocess.Popen] = []
    collector = None
    total = args.devices * args.messages
    try:
        collector = FleetCollector(server, FleetStore(work / "fleet.db"), client_id="bench-collector").start()
        for i in range(args.processes):
            group = devices[i :: args.processes]
            cmd = [sys.executable, "-m", "simulations.benchmarks.mqtt_telemetry", "--worker"]
            cmd += ["--devices-list", ",".join(group), "--credentials", str(work / "credentials.json")]
            cmd += ["--messages", str(args.messages), "--timeout", str(args.timeout)]
            procs.append(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        for p in procs:
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("a sender did not connect")
        start = time.perf_counter()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        deadline = time.monotonic() + args.timeout
        while collector.received < total and time.monotonic() < deadline:
            time.sleep(0.002)
        stored_at = time.perf_counter() - start
        send_seconds = [float(p.stdout.readline().split()[1]) for p in procs]
        time.sleep(1.0)  # anything late (a duplicate) still counts
        report = collector.store.sequence_report()
        return {
            "sent": total,
            "stored": report["received"],
            "lost": total - report["received"],
            "sequence_gaps": report["lost"],
            "duplicates": report["duplicates"],
            "seconds": stored_at,
            "rate": report["received"] / stored_at,
            "send_seconds_max": max(send_seconds),
            "send_rate": total / max(send_seconds),
        }
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        if collector is not None:
            collector.stop()
        broker.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--devices", type=int, default=100)
    p.add_argument("--processes", type=int, default=4, help="sender processes the device clients are spread over")
    p.add_argument("--messages", type=int, default=200, help="telemetry messages per device")
    p.add_argument("--broker", choices=("mosquitto", "embedded", "both"), default="both")
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--out", type=Path)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--devices-list", help=argparse.SUPPRESS)
    p.add_argument("--credentials", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        args.devices = args.devices_list
        return worker(args)

    load_at_start = [round(v, 2) for v in os.getloadavg()]
    kinds = ["mosquitto", "embedded"] if args.broker == "both" else [args.broker]
    with tempfile.TemporaryDirectory(prefix="fedge-bench-telemetry-") as tmp:
        results = {k: measure(k, args, Path(tmp) / k) for k in kinds}
    rows = []
    for kind, r in results.items():
        rows.append(Row(f"{kind}: telemetry stored by the collector, QoS 1", round(r["rate"], 1), "msg/s"))
        rows.append(Row(f"{kind}: messages lost (of {r['sent']})", r["lost"], "messages"))
        rows.append(Row(f"{kind}: gaps in sequence numbers", r["sequence_gaps"], "messages"))
        rows.append(Row(f"{kind}: senders' publish rate (all PUBACKs back)", round(r["send_rate"], 1), "msg/s"))
    if "mosquitto" in results and "embedded" in results:
        m, e = results["mosquitto"]["rate"], results["embedded"]["rate"]
        rows.append(Row.compare("embedded / mosquitto ingest rate", round(e / m, 3), "x", "mosquitto", 1.0))
    settings = {
        "devices": args.devices,
        "sender_processes": args.processes,
        "messages_per_device": args.messages,
        "payload_bytes": len(telemetry_payload("tel-000", 1)),
        "results": results,
        "timed": "'go' to every sender -> the collector has stored the last message (SQLite)",
        "nice": os.nice(0),
        "load_average_1_5_15_min_at_start": load_at_start,
        "load_average_1_5_15_min_at_end": [round(v, 2) for v in os.getloadavg()],
        "note": "2 cores shared with other work: the load average says how much",
    }
    write_results("mqtt_telemetry", rows, out=args.out, settings=settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

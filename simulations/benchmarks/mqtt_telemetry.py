"""Telemetry ingest over loopback at QoS 1: how many device messages per second reach the fleet database, and how
many are lost.

- Senders: ``--processes`` processes, each holding ``--devices / --processes`` device connections (paho-mqtt, one
  client per device, logged in as that device where the broker checks it; one thread per process drives its
  clients through paho's external-loop API). Every device publishes ``--messages`` telemetry messages (the agent's
  own format, about 400 bytes, sequence numbers 1..N) at QoS 1 as fast as its client allows (up to 100
  unacknowledged), then waits for every PUBACK.
- Receiver: the real fleet collector (:class:`edge.delivery.collector.FleetCollector`: one paho client, persistent
  session, QoS 1) writing every message to SQLite.
- Timed from the moment every sender is told to go until the collector has stored the last message; lost = sent
  minus stored, and the gaps in the sequence numbers the database holds (they must agree). The CPU time each
  part used in that window (collector, senders, broker) is reported per message: on a 2-core machine the three
  share the cores, so the rate is bounded by their sum.
- Brokers: Mosquitto from the config fedge writes (password file, ACL, persistence) and the embedded amqtt broker
  as its own process.

    python -m simulations.benchmarks.mqtt_telemetry [--devices 100] [--processes 4] [--messages 200] [--broker both]

With ``--collectors``: the devices on Mosquitto, stored by one ``fedge fleet collect`` process against two of them as
a group (a shared subscription) writing one PostgreSQL database, alternating, and by one collector on SQLite for
reference (``results/fleet_collectors.json``). The devices are light (``--sender raw``, :func:`raw_worker`): each
is its own MQTT connection, logged in as that device and held to its ACL by Mosquitto, but its messages are encoded
before the clock starts and they nap between polls, so the senders cost about 3 µs of CPU per message instead of
paho's 90. On a machine that runs everything this matters: in the field the devices are elsewhere, and every core the
simulated devices take is one the collectors cannot scale into. For each setup it also reports the cores the
collectors used, the CPU per message of every part (collectors, senders, broker, PostgreSQL's processes, the
benchmark's own row counting, the rest of the machine), how busy the machine was, and the most its cores could store
at that CPU per message: where one collector leaves little of the machine idle, a second has no core to run on, and
the ratio shows the machine, not the collectors.

With ``--collector-cpu CORES`` as well, each collector process is held to CORES of CPU (a cgroup quota of its own, as
a container's CPU limit sets; needs root), so that each member brings its own share of CPU as it does on a host of its
own: the ratio then shows how the group scales (``results/fleet_collectors_limited.json``).

    python -m simulations.benchmarks.mqtt_telemetry --collectors [--collector-cpu 0.4] [--repeats 5] [--messages 800]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from simulations.benchmarks.common import (
    CpuQuota,
    Row,
    load_average,
    load_settings,
    loopback_broker,
    machine_busy_seconds,
    write_results,
)


def telemetry_payload(device: str, seq: int, *, version: int = 2, model_id: str = "mnist-cnn") -> bytes:
    """One telemetry message in the agent's format (about 400 bytes)."""
    return json.dumps(
        {
            "type": "telemetry",
            "device_id": device,
            "session": "bench",
            "seq": seq,
            "ts": round(time.time(), 3),
            "model_id": model_id,
            "version": version,
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
    """Connect one client per device, say "ready", wait for "go", publish, wait for every PUBACK, say "done S C".

    The clients of one process share one thread: a ``select`` loop drives paho's ``loop_read``/``loop_write``
    (paho's external-loop API) instead of one network thread per client, so the devices simulated on this machine
    spend the CPU they share with the broker and the collector on MQTT, not on switching between 25 threads.
    """
    import select

    from edge.agent.link import make_client
    from edge.agent.protocol import BrokerAddress, telemetry_topic

    credentials = json.loads(Path(args.credentials).read_text())
    devices = args.devices.split(",")
    acked = [0]

    def on_publish(client, userdata, mid, reason_code, properties) -> None:
        acked[0] += 1

    clients = {}
    for d in devices:
        address = BrokerAddress.parse(credentials[d])
        client = make_client(f"bench-{d}", address, clean_session=True, max_inflight=100)
        client.on_publish = on_publish
        client.connect(address.host, address.port, keepalive=60)
        clients[d] = client
    by_socket = {c.socket(): c for c in clients.values()}

    def pump(timeout: float) -> None:
        writers = [s for s, c in by_socket.items() if c.want_write()]
        readable, writable, _ = select.select(list(by_socket), writers, [], timeout)
        for s in readable:
            by_socket[s].loop_read()
        for s in writable:
            by_socket[s].loop_write()

    deadline = time.monotonic() + 30
    while not all(c.is_connected() for c in clients.values()):
        if time.monotonic() > deadline:
            return 1
        pump(0.1)
    payloads = {d: [telemetry_payload(d, s) for s in range(1, args.messages + 1)] for d in devices}
    topics = {d: telemetry_topic(d) for d in devices}
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1
    start, cpu = time.perf_counter(), time.process_time()
    total = args.messages * len(devices)
    for i in range(args.messages):  # interleave the devices, as a fleet sends; paho queues past 100 in flight
        for d in devices:
            clients[d].publish(topics[d], payloads[d][i], qos=1)
    deadline = time.monotonic() + args.timeout
    while acked[0] < total and time.monotonic() < deadline:
        pump(0.05)
    print(f"done {time.perf_counter() - start:.4f} {time.process_time() - cpu:.4f} {acked[0]}", flush=True)
    for c in clients.values():
        c.disconnect()
    return 0 if acked[0] == total else 1


def _mqtt_string(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return len(data).to_bytes(2, "big") + data


def _mqtt_packet(first_byte: int, body: bytes) -> bytes:
    """An MQTT packet: its fixed header (type and flags, remaining length as a variable-length integer) and body."""
    length, encoded = len(body), bytearray()
    while True:
        digit, length = length % 128, length // 128
        encoded.append(digit | (0x80 if length else 0))
        if not length:
            return bytes([first_byte]) + bytes(encoded) + body


def mqtt_connect(client_id: str, username: str, password: str) -> bytes:
    """An MQTT 3.1.1 CONNECT: user name, password, clean session, keepalive 0 (no PINGREQ to send, however long a
    run lasts)."""
    body = _mqtt_string("MQTT") + bytes([4, 0xC2]) + (0).to_bytes(2, "big")
    return _mqtt_packet(0x10, body + _mqtt_string(client_id) + _mqtt_string(username) + _mqtt_string(password))


def mqtt_publish(topic: str, packet_id: int, payload: bytes) -> bytes:
    """An MQTT PUBLISH at QoS 1 (not retained)."""
    return _mqtt_packet(0x32, _mqtt_string(topic) + packet_id.to_bytes(2, "big") + payload)


#: how long a light sender sleeps between two polls of its connections (see :func:`raw_worker`)
SENDER_NAP_S = 0.05


def raw_worker(args: argparse.Namespace) -> int:
    """Like :func:`worker`, with light devices: each is one TCP connection speaking MQTT 3.1.1 itself (CONNECT with
    the device's own user name and password, then every PUBLISH at QoS 1 encoded before "go" and written at once;
    the PUBACKs are counted as they come back). Mosquitto authenticates the device and checks every publish against
    its ACL as it does for the agent; the simulated devices cost almost no CPU, so the machine's cores go to what
    is measured (the broker, the collectors, the database)."""
    import selectors
    import socket

    from edge.agent.protocol import BrokerAddress, telemetry_topic

    credentials = json.loads(Path(args.credentials).read_text())
    devices = args.devices.split(",")
    socks: dict[str, socket.socket] = {}
    for d in devices:
        address = BrokerAddress.parse(credentials[d])
        sock = socket.create_connection((address.host, address.port), timeout=30)
        sock.sendall(mqtt_connect(f"bench-{d}", address.username or "", address.password or ""))
        connack = b""
        while len(connack) < 4:
            chunk = sock.recv(4 - len(connack))
            if not chunk:
                return 1
            connack += chunk
        if connack[0] != 0x20 or connack[3] != 0:
            print(f"{d}: CONNACK {connack.hex()}", file=sys.stderr)
            return 1
        sock.setblocking(False)
        socks[d] = sock
    streams = {
        d: b"".join(
            mqtt_publish(telemetry_topic(d), seq, telemetry_payload(d, seq)) for seq in range(1, args.messages + 1)
        )
        for d in devices
    }
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1
    start, cpu = time.perf_counter(), time.process_time()
    selector = selectors.DefaultSelector()
    pending = {d: memoryview(streams[d]) for d in devices}
    received = {d: 0 for d in devices}  # bytes of PUBACK back (4 each)
    for d, sock in socks.items():
        selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, d)
    total, acked = args.messages * len(devices), 0
    deadline = time.monotonic() + args.timeout
    while acked < total and time.monotonic() < deadline:
        # a nap between polls: the kernel's socket buffers hold what is still to be written and the PUBACKs that
        # came back, so each call moves many packets (without it, one recv per PUBACK cost 12-17 us of CPU per
        # message; with it, 2-4)
        time.sleep(SENDER_NAP_S)
        for key, events in selector.select(0.05):
            d, sock = key.data, key.fileobj
            if events & selectors.EVENT_WRITE and pending[d]:
                sent = sock.send(pending[d])
                pending[d] = pending[d][sent:]
                if not pending[d]:
                    selector.modify(sock, selectors.EVENT_READ, d)
            if events & selectors.EVENT_READ:
                data = sock.recv(1 << 16)
                if not data:
                    return 1
                before = received[d] // 4
                received[d] += len(data)
                acked += received[d] // 4 - before
    print(f"done {time.perf_counter() - start:.4f} {time.process_time() - cpu:.4f} {acked}", flush=True)
    for sock in socks.values():
        sock.setblocking(True)
        sock.sendall(bytes([0xE0, 0]))
        sock.close()
    return 0 if acked == total else 1


# ---------------------------------------------------------------------------------------------------- driver


def start_sender(devices: list[str], args: argparse.Namespace, work: Path) -> subprocess.Popen:
    """A sender process for ``devices`` (:func:`worker` or :func:`raw_worker`, as ``args.sender`` says); it prints
    "ready" once every device is connected, and starts on "go"."""
    cmd = [sys.executable, "-m", "simulations.benchmarks.mqtt_telemetry", "--worker", "--sender", args.sender]
    cmd += ["--devices-list", ",".join(devices), "--credentials", str(work / "credentials.json")]
    cmd += ["--messages", str(args.messages), "--timeout", str(args.timeout)]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


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
            procs.append(start_sender(group, args, work))
        for p in procs:
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("a sender did not connect")
        broker_process = psutil.Process(broker.process.pid)
        broker_cpu = sum(broker_process.cpu_times()[:2])
        start, collector_cpu = time.perf_counter(), time.process_time()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        deadline = time.monotonic() + args.timeout
        while collector.received < total and time.monotonic() < deadline:
            time.sleep(0.005)
        stored_at = time.perf_counter() - start
        collector_cpu = time.process_time() - collector_cpu
        broker_cpu = sum(broker_process.cpu_times()[:2]) - broker_cpu
        done = [p.stdout.readline().split() for p in procs]
        send_seconds = [float(d[1]) for d in done]
        sender_cpu = sum(float(d[2]) for d in done)
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
            "cpu_seconds": {
                "collector (this process)": round(collector_cpu, 3),
                "senders (all processes)": round(sender_cpu, 3),
                "broker": round(broker_cpu, 3),
            },
            "cpu_us_per_message": {
                "collector": round(collector_cpu / total * 1e6, 1),
                "senders": round(sender_cpu / total * 1e6, 1),
                "broker": round(broker_cpu / total * 1e6, 1),
            },
        }
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        if collector is not None:
            collector.stop()
        broker.stop()


# ------------------------------------------------------------------------------------ one collector or a group


class StoredCount:
    """Telemetry rows in the database, counted through one connection kept open for the whole run: the collectors
    write it from other processes. (A connection per count would start a PostgreSQL backend process each time, on
    the cores the ingest shares.)"""

    def __init__(self, db: str) -> None:
        self.db = db
        self._conn: Any = None

    def __call__(self) -> int:
        if self.db.startswith("postgresql://"):
            import psycopg

            if self._conn is None:
                self._conn = psycopg.connect(self.db, autocommit=True)
            return self._conn.execute("SELECT count(*) FROM telemetry").fetchone()[0]
        import sqlite3

        try:
            if self._conn is None:
                self._conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
            return self._conn.execute("SELECT count(*) FROM telemetry").fetchone()[0]
        except sqlite3.OperationalError:  # not created yet
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            return 0

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class GroupCpu:
    """CPU seconds used by groups of processes between :meth:`start` and :meth:`stop`: a group is every live process
    a predicate picks (read again at the stop, so a process started in between counts from zero)."""

    def __init__(self, groups: dict[str, Callable[[psutil.Process], bool]]) -> None:
        self.groups = groups
        self._start: dict[int, float] = {}

    @staticmethod
    def _cpu(process: psutil.Process) -> float:
        times = process.cpu_times()
        return times.user + times.system

    def _snapshot(self) -> dict[str, dict[int, float]]:
        found: dict[str, dict[int, float]] = {name: {} for name in self.groups}
        for process in psutil.process_iter():
            try:
                for name, picks in self.groups.items():
                    if picks(process):
                        found[name][process.pid] = self._cpu(process)
                        break
            except psutil.Error:
                continue
        return found

    def start(self) -> None:
        self._start = {pid: cpu for group in self._snapshot().values() for pid, cpu in group.items()}

    def stop(self) -> dict[str, float]:
        return {
            name: round(sum(cpu - self._start.get(pid, 0.0) for pid, cpu in group.items()), 3)
            for name, group in self._snapshot().items()
        }


def measure_collectors(store: str, collectors: int, args: argparse.Namespace, work: Path, pg) -> dict:
    """Ingest through ``collectors`` collector processes (``fedge fleet collect``; a group on a shared
    subscription when ``store`` is PostgreSQL, one plain collector on SQLite), each its own process."""
    import os

    work.mkdir(parents=True)
    devices = [f"tel-{i:03d}" for i in range(args.devices)]
    broker, server = loopback_broker("mosquitto", work, devices)
    broker.start(timeout=30)
    db = pg.create_database(f"ingest_{work.name.replace('-', '_')}") if store == "postgres" else str(work / "f.db")
    procs: list[subprocess.Popen] = []
    members: list[subprocess.Popen] = []
    quotas: list[CpuQuota] = []
    limit = getattr(args, "collector_cpu", None)
    total = args.devices * args.messages
    try:
        for i in range(collectors):
            cmd = [sys.executable, "-m", "simulations.cli", "fleet", "collect", "--broker"]
            cmd += [server.url(with_password=True), "--db", db, "--client-id", f"bench-collector-{i}"]
            if store == "postgres":
                cmd += ["--group", "bench"]
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            if limit:  # before the process starts, so that a quota that cannot be set stops the run at once
                quotas.append(CpuQuota(f"collector-{i}", limit))
            members.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env))
            if limit:
                quotas[-1].add(members[-1].pid)
        for m in members:
            if "collecting into" not in m.stdout.readline():
                raise RuntimeError("a collector did not start")
        for i in range(args.processes):
            group = devices[i :: args.processes]
            procs.append(start_sender(group, args, work))
        for p in procs:
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("a sender did not connect")
        collector_pids = {m.pid for m in members}
        sender_pids = {p.pid for p in procs}
        own_pid = os.getpid()
        cpu = GroupCpu(
            {
                "collectors": lambda q: q.pid in collector_pids,
                "senders": lambda q: q.pid in sender_pids,
                "broker": lambda q: q.pid == broker.process.pid,
                "postgresql": lambda q: q.name() == "postgres",
                "benchmark (counting rows)": lambda q: q.pid == own_pid,
            }
        )
        stored_count = StoredCount(db)
        cpu.start()
        busy = machine_busy_seconds()
        start = time.perf_counter()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        deadline = time.monotonic() + args.timeout
        stored = 0
        while stored < total and time.monotonic() < deadline:
            time.sleep(0.05)
            stored = stored_count()
        seconds = time.perf_counter() - start
        busy = machine_busy_seconds() - busy
        used = cpu.stop()
        stored_count.close()
        for p in procs:
            p.stdout.readline()
        used["rest of the machine"] = round(max(0.0, busy - sum(used.values())), 3)
        return {
            "store": store,
            "collectors": collectors,
            "collector_cpu_limit": limit,
            "sent": total,
            "stored": stored,
            "lost": total - stored,
            "seconds": seconds,
            "rate": stored / seconds,
            "cpu_seconds": used,
            "machine_busy": round(busy / (psutil.cpu_count() * seconds), 3),
        }
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        for m in members:
            m.terminate()
            try:
                m.wait(15)
            except subprocess.TimeoutExpired:
                m.kill()
                m.wait()
        for quota in quotas:
            quota.close()
        broker.stop()


def compare_collectors(args: argparse.Namespace) -> int:
    """One collector against two (PostgreSQL, shared subscription), alternating, with SQLite's one for reference."""
    from simulations.benchmarks.common import PostgresServer

    load_at_start = load_average()
    setups = [("postgres", 1), ("postgres", 2), ("sqlite", 1)]
    runs: dict[str, list[dict]] = {f"{s}-{n}": [] for s, n in setups}
    with tempfile.TemporaryDirectory(prefix="fedge-bench-collectors-") as tmp, PostgresServer() as pg:
        for i in range(args.repeats):
            for store, n in setups:
                key = f"{store}-{n}"
                runs[key].append(measure_collectors(store, n, args, Path(tmp) / f"{key}-{i}", pg))
    med = {k: statistics.median(r["rate"] for r in rs) for k, rs in runs.items()}
    lost = sum(r["lost"] for rs in runs.values() for r in rs)
    each = f", each limited to {args.collector_cpu:g} core" if args.collector_cpu else ""
    rows = [
        Row(f"PostgreSQL, 1 collector{each}: telemetry stored, QoS 1 (median of {args.repeats})",
            round(med["postgres-1"], 1), "msg/s"),
        Row.compare(f"PostgreSQL, 2 collectors (shared subscription){each}: telemetry stored (median of "
                    f"{args.repeats})", round(med["postgres-2"], 1), "msg/s", "1 collector",
                    round(med["postgres-1"], 1)),
        Row.compare(f"SQLite, 1 collector (the default){each}: telemetry stored", round(med["sqlite-1"], 1), "msg/s",
                    "PostgreSQL, 1 collector", round(med["postgres-1"], 1)),
        Row("messages lost (all runs)", lost, "messages"),
    ]  # fmt: skip
    cores = psutil.cpu_count()
    for key, rs in runs.items():
        # CPU per message of each part, and of the whole machine, in the median-rate run
        mid = sorted(rs, key=lambda r: r["rate"])[len(rs) // 2]
        used_by = round(mid["cpu_seconds"]["collectors"] / mid["seconds"], 2)
        rows.append(Row(f"{key}: cores the collectors used (together)", used_by, "cores"))
        for part, used in mid["cpu_seconds"].items():
            rows.append(Row(f"{key}: CPU per message, {part}", round(used / mid["sent"] * 1e6, 1), "us"))
        per_message = sum(mid["cpu_seconds"].values()) / mid["sent"]
        rows.append(Row(f"{key}: machine busy (all {cores} cores)", round(100 * mid["machine_busy"], 1), "%"))
        rows.append(
            Row.compare(
                f"{key}: the most {cores} cores could store at this CPU per message",
                round(cores / per_message, 1),
                "msg/s",
                "measured",
                round(mid["rate"], 1),
            )
        )
    settings = {
        "devices": args.devices,
        "sender_processes": args.processes,
        "sender": args.sender,
        "messages_per_device": args.messages,
        "runs": runs,
        "order": "alternating per repeat: PostgreSQL x1, PostgreSQL x2, SQLite x1 (each a fresh broker and database)",
        "timed": "'go' to every sender -> count(*) of telemetry (one connection, every 50 ms) reaches the "
        "messages sent",
        "cpu": "CPU seconds in the timed window of each part (collectors, senders, broker, every postgres process, "
        "this benchmark counting rows) and the rest of the machine (busy time minus theirs), per message; machine "
        "busy: busy time over cores x seconds",
        "postgres": "throwaway local cluster, fsync off (SQLite runs synchronous=NORMAL in WAL: no fsync per commit)",
        "collector_cpu_limit": args.collector_cpu
        and f"{args.collector_cpu:g} core per collector process (a cgroup CPU quota each, as a container limit sets)",
        **load_settings(load_at_start),
    }
    name = "fleet_collectors_limited" if args.collector_cpu else "fleet_collectors"
    write_results(name, rows, out=args.out, settings=settings)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--devices", type=int, default=100)
    p.add_argument("--processes", type=int, default=4, help="sender processes the device clients are spread over")
    p.add_argument("--messages", type=int, default=200, help="telemetry messages per device")
    p.add_argument("--broker", choices=("mosquitto", "embedded", "both"), default="both")
    p.add_argument(
        "--repeats", type=int, default=3, help="runs per broker (each a fresh broker); the median is reported"
    )
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--out", type=Path)
    p.add_argument(
        "--collectors",
        action="store_true",
        help="compare one collector with two on a shared subscription (PostgreSQL), and SQLite's one; writes "
        "results/fleet_collectors.json",
    )
    p.add_argument(
        "--collector-cpu",
        type=float,
        metavar="CORES",
        help="with --collectors: hold each collector process to CORES of CPU (a cgroup quota each, as a container's "
        "CPU limit does; needs root), so that each member brings its own share of CPU as it would on its own host, "
        "and the ratio shows how the group scales rather than how many cores the machine has left; writes "
        "results/fleet_collectors_limited.json",
    )
    p.add_argument(
        "--sender",
        choices=("paho", "raw"),
        help="the simulated devices: paho clients (what the agent uses; the default without --collectors) or raw "
        "MQTT connections that cost almost no CPU (the default with --collectors: the cores go to what is measured)",
    )
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--devices-list", help=argparse.SUPPRESS)
    p.add_argument("--credentials", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.sender is None:
        args.sender = "raw" if args.collectors else "paho"
    if args.worker:
        args.devices = args.devices_list
        return raw_worker(args) if args.sender == "raw" else worker(args)
    if args.collector_cpu is not None and not args.collectors:
        p.error("--collector-cpu goes with --collectors")
    if args.collector_cpu is not None and not args.collector_cpu > 0:
        p.error(f"--collector-cpu must be more than 0 cores, not {args.collector_cpu:g}")
    if args.collector_cpu is not None:
        try:  # one clear line now, not a traceback from the first run
            CpuQuota("check", args.collector_cpu).close()
        except RuntimeError as e:
            p.error(f"--collector-cpu: {e}")
    if args.collectors:
        return compare_collectors(args)

    load_at_start = load_average()
    kinds = ["mosquitto", "embedded"] if args.broker == "both" else [args.broker]
    with tempfile.TemporaryDirectory(prefix="fedge-bench-telemetry-") as tmp:
        runs = {k: [measure(k, args, Path(tmp) / f"{k}-{i}") for i in range(args.repeats)] for k in kinds}
    # the run with the median rate stands for the broker; lost messages are summed over every run
    results = {k: sorted(rs, key=lambda r: r["rate"])[len(rs) // 2] for k, rs in runs.items()}
    rows = []
    for kind, r in results.items():
        rates = sorted(x["rate"] for x in runs[kind])
        lost = sum(x["lost"] for x in runs[kind])
        sent = sum(x["sent"] for x in runs[kind])
        rows.append(
            Row(
                f"{kind}: telemetry stored by the collector, QoS 1 (median of {len(rates)})",
                round(r["rate"], 1),
                "msg/s",
            )
        )
        rows.append(Row(f"{kind}: slowest run", round(rates[0], 1), "msg/s"))
        rows.append(Row(f"{kind}: fastest run", round(rates[-1], 1), "msg/s"))
        rows.append(Row(f"{kind}: messages lost (of {sent}, all runs)", lost, "messages"))
        rows.append(
            Row(f"{kind}: gaps in sequence numbers (all runs)", sum(x["sequence_gaps"] for x in runs[kind]), "messages")
        )
        rows.append(Row(f"{kind}: senders' publish rate (all PUBACKs back)", round(r["send_rate"], 1), "msg/s"))
        for part, us in r["cpu_us_per_message"].items():
            rows.append(Row(f"{kind}: CPU per message, {part}", us, "us"))
    if "mosquitto" in results and "embedded" in results:
        m, e = results["mosquitto"]["rate"], results["embedded"]["rate"]
        rows.append(Row.compare("embedded / mosquitto ingest rate", round(e / m, 3), "x", "mosquitto", 1.0))
    settings = {
        "devices": args.devices,
        "sender_processes": args.processes,
        "sender": args.sender,
        "messages_per_device": args.messages,
        "payload_bytes": len(telemetry_payload("tel-000", 1)),
        "results": results,
        "runs": runs,
        "timed": "'go' to every sender -> the collector has stored the last message (SQLite)",
        **load_settings(load_at_start),
    }
    write_results("mqtt_telemetry", rows, out=args.out, settings=settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

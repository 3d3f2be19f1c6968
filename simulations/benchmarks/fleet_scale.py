"""A fleet of 10,000: how long from publish until 10,000 devices run the new model, over loopback Mosquitto, and how
much memory the broker and the collector hold.

- Devices: ``--devices`` light simulated devices in ``--processes`` worker processes, one MQTT connection each
  (logged in as that device on the device listener, with the agent's last will), driven by one thread per process
  through paho's external-loop API on epoll. Each does what the agent does with an update, through the agent's own
  verification core (:mod:`edge.agent.verify`): the manifest's signature, target (its group) and policy checks
  (expiry, format, version floor), then each chunk's length and sha256 and the whole file's length, sha256 and
  format (:class:`~edge.agent.verify.ChunkAssembler`); then it reports like the agent: an ``applied`` event, its new
  retained state and one telemetry message on the new version. No runtime, no store on disk: this measures delivery
  and the fleet's bookkeeping, not onnxruntime.
- Model: 50 KB of int8-like bytes in the ONNX format's first byte (one 128 KiB chunk).
- Server side: the real :class:`~edge.delivery.rollout.StagedRollout` (canaries first, their health judged on their
  telemetry against the previous version's, then everyone else) with one group manifest per version, and the real
  :class:`~edge.delivery.collector.FleetCollector` writing SQLite, in this process.
- Timed: from the first chunk published until the rollout has every device's ``applied`` outcome; split into the
  canary stage, the canaries' health check and the rest of the fleet. Memory: peak RSS of Mosquitto, of this
  process (collector and publisher), and of the device processes together, sampled every 0.25 s.

    python -m simulations.benchmarks.fleet_scale [--devices 10000] [--processes 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from simulations.benchmarks.common import Row, load_average, load_settings, loopback_broker, write_results
from simulations.benchmarks.mqtt_telemetry import telemetry_payload

MODEL_ID = "fleet-model"
GROUP = "fleet"
MODEL_BYTES = 50 * 1024


def model_bytes(version: int) -> bytes:
    """An int8-like model: random bytes behind the ONNX protobuf's first byte (the format check looks at it)."""
    import numpy as np

    rng = np.random.default_rng(version)
    return b"\x08" + rng.integers(-128, 128, MODEL_BYTES - 1, dtype=np.int8).tobytes()


# ---------------------------------------------------------------------------------------------------- worker


class Device:
    """One simulated device: its connection and what it has accepted (the agent's state, without the disk)."""

    __slots__ = ("device_id", "client", "version", "assembler", "seq", "chunk_filter")

    def __init__(self, device_id: str, client) -> None:
        self.device_id = device_id
        self.client = client
        self.version = 1
        self.assembler = None
        self.seq = 0
        self.chunk_filter = ""


def worker(args: argparse.Namespace) -> int:
    """Connect every device, report version 1, then take updates until stdin closes."""
    import selectors

    from edge.agent.config import AgentLimits
    from edge.agent.errors import AgentError
    from edge.agent.link import make_client
    from edge.agent.protocol import (
        BrokerAddress,
        chunk_topic,
        events_topic,
        lost_message,
        manifest_topic,
        parse_topic,
        state_message,
        state_topic,
        telemetry_topic,
    )
    from edge.agent.verify import ChunkAssembler, load_public_key, verify_manifest

    credentials = json.loads(Path(args.credentials).read_text())
    trusted = dict([load_public_key(Path(args.trust).read_bytes())])
    limits = AgentLimits()
    selector = selectors.DefaultSelector()
    dirty: set = set()  # clients with bytes to write
    subscribed = [0]
    rejected = [0]

    def send(device: Device, topic: str, payload: dict | bytes, *, retain: bool = False) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload, separators=(",", ":")).encode()
        device.client.publish(topic, data, qos=1, retain=retain)
        dirty.add(device.client)

    def state(device: Device) -> dict:
        return state_message(
            device_id=device.device_id,
            state="ready",
            runtime="onnx",
            session="bench",
            ts=time.time(),
            model_id=MODEL_ID,
            version=device.version,
        )

    def report(device: Device) -> None:
        device.seq += 1
        payload = telemetry_payload(device.device_id, device.seq, version=device.version, model_id=MODEL_ID)
        send(device, telemetry_topic(device.device_id), payload)

    def on_connect(client, device: Device, flags, reason_code, properties) -> None:
        client.subscribe(manifest_topic(device.device_id), qos=1)
        dirty.add(client)

    def on_subscribe(client, device: Device, mid, reason_codes, properties) -> None:
        if device.version == 1 and device.seq == 0:  # the birth: state and a first report on version 1
            subscribed[0] += 1
            send(device, state_topic(device.device_id), state(device), retain=True)
            report(device)

    def outcome(device: Device, result: str, version: int | None, reason: str = "") -> None:
        event = {
            "type": "update",
            "device_id": device.device_id,
            "session": "bench",
            "ts": round(time.time(), 3),
            "outcome": result,
            "reason": reason,
            "detail": "",
            "model_id": MODEL_ID,
            "version": version,
            "running_version": device.version,
        }
        send(device, events_topic(device.device_id), event)

    def on_message(client, device: Device, message) -> None:
        topic = parse_topic(message.topic)
        try:
            if topic is None:
                return
            if topic.kind == "manifest":
                if not message.payload:
                    return
                manifest = verify_manifest(
                    message.payload,
                    trusted=trusted,
                    limits=limits,
                    now=time.time(),
                    floor_version=device.version,
                    model_format="onnx",
                    device_id=device.device_id,
                    group=GROUP,
                    model_ids=(MODEL_ID,),
                )
                device.assembler = ChunkAssembler(manifest, started=time.time(), limits=limits)
                device.chunk_filter = manifest.chunk_filter()
                client.subscribe(device.chunk_filter, qos=1)
                dirty.add(client)
            elif topic.kind == "chunk" and device.assembler is not None:
                m = device.assembler.manifest
                if message.topic != chunk_topic(m.model_id, m.version, m.format, topic.index):
                    return
                if device.assembler.add(topic.index, message.payload):
                    device.assembler.result()  # the whole file: length, sha256, format
                    client.unsubscribe(device.chunk_filter)
                    device.version, device.assembler = m.version, None
                    outcome(device, "applied", m.version)
                    send(device, state_topic(device.device_id), state(device), retain=True)
                    report(device)
        except AgentError as e:
            rejected[0] += 1
            device.assembler = None
            outcome(device, "rejected", None, getattr(e, "reason", type(e).__name__))

    devices = []
    for device_id in args.devices.split(","):
        address = BrokerAddress.parse(credentials[device_id])
        client = make_client(device_id, address, clean_session=True, max_inflight=20)
        device = Device(device_id, client)
        client.user_data_set(device)
        client.will_set(
            state_topic(device_id), json.dumps(lost_message(device_id, "onnx", "bench")), qos=1, retain=True
        )
        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_message = on_message
        client.connect(address.host, address.port, keepalive=600)
        selector.register(client.socket(), selectors.EVENT_READ, client)
        dirty.add(client)
        devices.append(device)

    def pump(timeout: float) -> None:
        for key, _ in selector.select(timeout):
            client = key.data
            client.loop_read()
            if client.want_write():
                dirty.add(client)
        for client in list(dirty):
            client.loop_write()
            if not client.want_write():
                dirty.discard(client)

    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    announced = False
    misc_at = time.monotonic()
    while not stop.is_set():
        pump(0.05)
        if not announced and subscribed[0] == len(devices) and not dirty:
            print(f"ready {len(devices)}", flush=True)
            announced = True
        if time.monotonic() - misc_at > 5:
            misc_at = time.monotonic()
            for d in devices:
                d.client.loop_misc()
    for d in devices:
        d.client.disconnect()
        d.client.loop_write()
    return 0 if rejected[0] == 0 else 1


# ---------------------------------------------------------------------------------------------------- driver


class PeakRss:
    """Samples the resident memory of some processes every ``interval`` seconds and keeps each group's peak."""

    def __init__(self, groups: dict[str, list[int]], interval: float = 0.25) -> None:
        self.groups = {name: [psutil.Process(p) for p in pids] for name, pids in groups.items()}
        self.peak = dict.fromkeys(groups, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> dict[str, int]:
        now = {}
        for name, procs in self.groups.items():
            total = 0
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            now[name] = total
            self.peak[name] = max(self.peak[name], total)
        return now

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self.sample()

    def __enter__(self) -> PeakRss:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def cpu_seconds(groups: dict[str, list[int]]) -> dict[str, float]:
    """User + system CPU seconds each group of processes has used so far (this process: all its threads)."""
    out = {}
    for name, pids in groups.items():
        total = 0.0
        for pid in pids:
            try:
                times = psutil.Process(pid).cpu_times()
                total += times.user + times.system
            except psutil.Error:
                pass
        out[name] = total
    return out


def raise_open_files() -> int:
    """``ulimit -n`` up to the hard limit for this process and the broker and devices it starts."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def measure(args: argparse.Namespace, work: Path) -> dict:
    from edge.delivery.client import ServerClient
    from edge.delivery.collector import FleetCollector, FleetStore
    from edge.delivery.keys import SigningKey, write_keypair
    from edge.delivery.publisher import Artifact, ModelPublisher, sign_artifact
    from edge.delivery.rollout import RolloutPolicy, StagedRollout

    work.mkdir(parents=True)
    devices = [f"fleet-{i:05d}" for i in range(args.devices)]
    broker, server = loopback_broker("mosquitto", work, devices)
    key = SigningKey.generate()
    _, public = write_keypair(key, work / "server")
    broker.start(timeout=60)
    procs: list[subprocess.Popen] = []
    collector = client = None
    try:
        collector = FleetCollector(server, FleetStore(work / "fleet.db"), client_id="bench-collector").start()
        client = ServerClient("bench-publisher", server, max_inflight=1000).connect()
        publisher = ModelPublisher(client, key, timeout=300)
        connect_started = time.perf_counter()
        for i in range(args.processes):
            group = devices[i :: args.processes]
            cmd = [sys.executable, "-m", "simulations.benchmarks.fleet_scale", "--worker"]
            cmd += ["--devices-list", ",".join(group), "--credentials", str(work / "credentials.json")]
            cmd += ["--trust", str(public)]
            procs.append(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        for p in procs:
            line = p.stdout.readline().split()
            if not line or line[0] != "ready":
                raise RuntimeError(f"a device process did not connect its devices: {line}")
        connected_s = time.perf_counter() - connect_started

        def reported() -> bool:
            return len(collector.store.report_counts(devices, 1, 0.0)) == len(devices)

        if not collector.wait_until(lambda s: reported(), args.timeout, poll=0.5):
            raise RuntimeError("not every device reported version 1")
        settled_s = time.perf_counter() - connect_started
        policy = RolloutPolicy(
            canary_fraction=args.canary_fraction,
            health_reports=1,
            apply_timeout_s=args.timeout,
            health_timeout_s=args.timeout,
        )
        rounds = []
        groups = {
            "broker": [broker.process.pid],
            "collector + publisher": [os.getpid()],
            "devices": [p.pid for p in procs],
        }
        with PeakRss(groups) as rss:
            idle = rss.sample()
            for version in range(2, 2 + args.rounds):
                artifact = Artifact(work / "model.onnx", model_bytes(version), MODEL_ID, version, "onnx")
                model = sign_artifact(artifact, key)
                marks: list[tuple[str, float]] = []

                def progress(message: str, marks=marks) -> None:
                    marks.append((message.split(" ")[0], time.perf_counter()))

                rollout = StagedRollout(
                    publisher=publisher,
                    collector=collector,
                    models={"onnx": model},
                    policy=policy,
                    progress=progress,
                    group=GROUP,
                )
                cpu_before = cpu_seconds(groups)
                start = time.perf_counter()
                result = rollout.run(devices)
                elapsed = time.perf_counter() - start
                cpu = {k: round(v - cpu_before[k], 3) for k, v in cpu_seconds(groups).items()}
                if result.status != "completed":
                    raise RuntimeError(f"v{version}: rollout {result.status}: {result.verdict}")
                canary_done = dict(marks).get("waiting", start)
                healthy = next((t for m, t in marks if m == "canaries" and t > canary_done), canary_done)
                rounds.append(
                    {
                        "version": version,
                        "seconds": elapsed,
                        "canaries": len(result.canaries),
                        "canary_stage_s": canary_done - start,
                        "health_check_s": healthy - canary_done,
                        "rest_stage_s": start + elapsed - healthy,
                        "cpu_seconds": cpu,
                    }
                )
                publisher.clear_chunks(model.manifest)
        report = collector.store.sequence_report()
        return {
            "rounds": rounds,
            "connect_seconds": connected_s,
            "settle_seconds": settled_s,
            "peak_rss_bytes": rss.peak,
            "idle_rss_bytes": idle,
            "telemetry": report,
        }
    finally:
        for p in procs:
            try:
                p.stdin.close()
            except OSError:
                pass
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for c in (client, collector):
            if c is not None:
                c.stop() if hasattr(c, "stop") else c.close()
        broker.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--devices", type=int, default=10000)
    p.add_argument("--processes", type=int, default=4, help="device processes the connections are spread over")
    p.add_argument("--rounds", type=int, default=3, help="timed rollouts (a new version each); the median is reported")
    p.add_argument("--canary-fraction", type=float, default=0.1)
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--out", type=Path)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--devices-list", help=argparse.SUPPRESS)
    p.add_argument("--credentials", help=argparse.SUPPRESS)
    p.add_argument("--trust", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    open_files = raise_open_files()
    if args.worker:
        args.devices = args.devices_list
        return worker(args)

    load_at_start = load_average()
    with tempfile.TemporaryDirectory(prefix="fedge-bench-fleet-") as tmp:
        r = measure(args, Path(tmp) / "run")
    seconds = [x["seconds"] for x in r["rounds"]]
    med = statistics.median(seconds)
    mid = sorted(r["rounds"], key=lambda x: x["seconds"])[len(seconds) // 2]
    mib = 1024 * 1024
    n = args.devices
    rows = [
        Row(f"publish -> {n} devices run the new version (staged, median of {len(seconds)})", round(med, 2), "s"),
        Row(f"slowest of {len(seconds)} rollouts", round(max(seconds), 2), "s"),
        Row(f"  canary stage ({mid['canaries']} devices: chunk, manifests, checks, reports)",
            round(mid["canary_stage_s"], 2), "s"),
        Row("  canaries' health check (telemetry on the new version judged)", round(mid["health_check_s"], 2), "s"),
        Row(f"  the other {n - mid['canaries']} devices", round(mid["rest_stage_s"], 2), "s"),
        Row(f"{n} connections up and reporting version 1 (untimed set-up)", round(r["settle_seconds"], 1), "s"),
        Row("Mosquitto peak RSS", round(r["peak_rss_bytes"]["broker"] / mib, 1), "MiB"),
        Row("Mosquitto RSS, fleet connected and idle", round(r["idle_rss_bytes"]["broker"] / mib, 1), "MiB"),
        Row("collector + publisher process peak RSS", round(r["peak_rss_bytes"]["collector + publisher"] / mib, 1),
            "MiB"),
        Row(f"device processes peak RSS ({args.processes} together)", round(r["peak_rss_bytes"]["devices"] / mib, 1),
            "MiB"),
        Row("telemetry lost (gaps in sequence numbers)", r["telemetry"]["lost"], "messages"),
        *[Row(f"CPU during the median rollout: {part}", sec, "s") for part, sec in mid["cpu_seconds"].items()],
    ]  # fmt: skip
    settings = {
        "devices": n,
        "device_processes": args.processes,
        "model_bytes": MODEL_BYTES,
        "canary_fraction": args.canary_fraction,
        "rounds": r["rounds"],
        "open_files_limit": open_files,
        "connect_seconds": round(r["connect_seconds"], 2),
        "peak_rss_bytes": r["peak_rss_bytes"],
        "telemetry": r["telemetry"],
        "timed": "StagedRollout.run: first chunk published -> an 'applied' outcome from every device in the store",
        **load_settings(load_at_start),
    }
    write_results("fleet_scale", rows, out=args.out, settings=settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

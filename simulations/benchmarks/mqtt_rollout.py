"""How long from publish until 100 agents run the new model (int8 MNIST CNN, about 1.7 MB), over loopback.

The question: once the server publishes a signed model, how soon does a fleet of 100 devices run it? Timed from the
first chunk published until the collector has every device's ``applied`` outcome for the new version (a device
sends it after it checked every chunk and the whole file, wrote it to its store and swapped its runtime to it).

- Model: ``mnist-cnn`` (Conv32-Conv64-FC512, 1.66M parameters) exported to ONNX and quantized to static int8 by
  :mod:`edge.export` / :mod:`edge.compress` (weights untrained: only the size matters here), 128 KiB chunks.
- Agents: the real :class:`edge.agent.service.AgentService` (paho client, verification, store with fsync, an
  onnxruntime session per swap), ``--processes`` worker processes holding ``agents / processes`` agents each (one
  paho connection and one agent thread per agent). Each agent has its own store directory.
- Brokers: Mosquitto from the config fedge writes (password file, ACL, persistence), and the embedded amqtt broker
  as its own process. The agents first get version 1 (untimed), then each timed round publishes a new version.

    python -m simulations.benchmarks.mqtt_rollout [--agents 100] [--processes 4] [--rounds 3] [--broker both]
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from simulations.benchmarks.common import Row, load_average, load_settings, loopback_broker, write_results


def build_model(path: Path) -> Path:
    """The int8 MNIST CNN as fedge's export makes it."""
    import numpy as np

    from edge.compress.calibration import CalibrationSet
    from edge.compress.quantize import quantize_onnx
    from edge.export.onnx_export import export_onnx
    from shared_models.models import build_model as registry_model

    model = registry_model("mnist-cnn", input_shape=(1, 28, 28), num_classes=10, seed=0).eval()
    float_path = export_onnx(model, path.with_name("mnist-cnn-fp32.onnx"), input_shape=(1, 28, 28))
    x = np.random.default_rng(0).random((64, 1, 28, 28), dtype=np.float32)
    quantize_onnx(float_path, path, mode="static", calibration=CalibrationSet.from_array(x, input_shape=(1, 28, 28)))
    return path


# ---------------------------------------------------------------------------------------------------- worker


def worker(args: argparse.Namespace) -> int:
    """Run ``args.devices`` agents in this process until stdin closes (or SIGTERM)."""
    from edge.agent.config import AgentConfig
    from edge.agent.protocol import BrokerAddress
    from edge.agent.service import AgentService

    credentials = json.loads(Path(args.credentials).read_text())
    services = []
    for device in args.devices.split(","):
        config = AgentConfig(
            device_id=device,
            broker=BrokerAddress.parse(credentials[device]),
            store=Path(args.stores) / device,
            model_ids=("mnist-cnn",),
            trusted_keys=(Path(args.trust),),
            report_interval_s=3600.0,  # no telemetry: this measures delivery only
        )
        services.append(AgentService(config).start())
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    print("ready", flush=True)
    stop.wait()
    for s in services:
        s.stop(timeout=2)
    return 0


# ---------------------------------------------------------------------------------------------------- driver


class Fleet:
    """Worker processes holding the agents."""

    def __init__(self, devices: list[str], processes: int, *, credentials: Path, stores: Path, trust: Path) -> None:
        self.procs: list[subprocess.Popen] = []
        groups = [devices[i::processes] for i in range(processes)]
        for group in groups:
            cmd = [
                sys.executable,
                "-m",
                "simulations.benchmarks.mqtt_rollout",
                "--worker",
                "--devices",
                ",".join(group),
            ]
            cmd += ["--credentials", str(credentials), "--stores", str(stores), "--trust", str(trust)]
            self.procs.append(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        for p in self.procs:
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("a worker did not start")

    def stop(self) -> None:
        for p in self.procs:
            try:
                p.stdin.close()
            except OSError:
                pass
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def measure(kind: str, args: argparse.Namespace, model_path: Path, work: Path) -> dict:
    from edge.delivery.client import ServerClient
    from edge.delivery.collector import FleetCollector, FleetStore
    from edge.delivery.keys import SigningKey, write_keypair
    from edge.delivery.publisher import ModelPublisher, load_artifact, sign_artifact

    work.mkdir(parents=True)
    devices = [f"bench-{i:03d}" for i in range(args.agents)]
    broker, server = loopback_broker(kind, work, devices)
    key = SigningKey.generate()
    _, public = write_keypair(key, work / "server")
    broker.start(timeout=30)
    fleet = collector = client = None
    try:
        collector = FleetCollector(server, FleetStore(work / "fleet.db"), client_id="bench-collector").start()
        client = ServerClient("bench-publisher", server).connect()
        publisher = ModelPublisher(client, key, timeout=300)
        fleet = Fleet(devices, args.processes, credentials=work / "credentials.json", stores=work, trust=public)
        if not collector.wait_until(lambda s: len(s.devices()) == len(devices), 120):
            raise RuntimeError("not every agent came online")

        def roll(version: int) -> float:
            model = sign_artifact(load_artifact(model_path, model_id="mnist-cnn", version=version), key)
            since = time.time()
            start = time.perf_counter()
            publisher.publish_chunks(model)
            publisher.assign(model, devices)

            def applied(store) -> bool:
                events = store.events(since=since)
                done = {e["device_id"] for e in events if e["outcome"] == "applied" and e["version"] == version}
                return len(done) == len(devices)

            ok = collector.wait_until(applied, args.timeout, poll=0.01)
            elapsed = time.perf_counter() - start
            if not ok:
                rejected = [e for e in collector.store.events(since=since) if e["outcome"] != "applied"]
                raise RuntimeError(f"v{version}: not every agent applied it in {args.timeout} s; {rejected[:3]}")
            publisher.clear_chunks(model.manifest)
            return elapsed

        roll(1)  # every agent starts with a model
        times = [roll(v) for v in range(2, 2 + args.rounds)]
        return {"seconds": times, "chunks": -(-model_path.stat().st_size // (128 * 1024))}
    finally:
        if fleet is not None:
            fleet.stop()
        for c in (client, collector):
            if c is not None:
                c.stop() if hasattr(c, "stop") else c.close()
        broker.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--agents", type=int, default=100)
    p.add_argument("--processes", type=int, default=4, help="worker processes the agents are spread over")
    p.add_argument("--rounds", type=int, default=3, help="timed rollouts per broker (new version each)")
    p.add_argument("--broker", choices=("mosquitto", "embedded", "both"), default="both")
    p.add_argument("--model", type=Path, help="an int8 ONNX model to deliver (default: build the int8 MNIST CNN)")
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--out", type=Path)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--devices", help=argparse.SUPPRESS)
    p.add_argument("--credentials", help=argparse.SUPPRESS)
    p.add_argument("--stores", help=argparse.SUPPRESS)
    p.add_argument("--trust", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)

    load_at_start = load_average()
    with tempfile.TemporaryDirectory(prefix="fedge-bench-rollout-") as tmp:
        tmp = Path(tmp)
        model_path = args.model or build_model(tmp / "mnist-cnn-int8.onnx")
        size = model_path.stat().st_size
        kinds = ["mosquitto", "embedded"] if args.broker == "both" else [args.broker]
        results = {k: measure(k, args, model_path, tmp / k) for k in kinds}
    rows = []
    for kind, r in results.items():
        med = statistics.median(r["seconds"])
        per = -(-args.agents // args.processes)
        fleet = f"{args.agents} agents ({args.processes} processes x {per}, one connection each)"
        rows.append(Row(f"{kind}: publish -> {fleet} run the {size / 1e6:.2f} MB model (median)", round(med, 3), "s"))
        rows.append(Row(f"{kind}: slowest of {args.rounds} rollouts", round(max(r["seconds"]), 3), "s"))
    if "mosquitto" in results and "embedded" in results:
        m, e = (statistics.median(results[k]["seconds"]) for k in ("mosquitto", "embedded"))
        rows.append(Row.compare("embedded / mosquitto time", round(e / m, 2), "x", "mosquitto", 1.0))
    settings = {
        "agents": args.agents,
        "processes": args.processes,
        "agents_per_process": -(-args.agents // args.processes),
        "sharing": "each worker process runs agents_per_process AgentService instances, each with its own paho "
        "connection, agent thread, store directory and onnxruntime session",
        "model": "mnist-cnn int8 (static QDQ, onnxruntime.quantization), untrained weights",
        "model_bytes": size,
        "chunk_bytes": 128 * 1024,
        "rounds": args.rounds,
        "seconds": {k: [round(s, 4) for s in r["seconds"]] for k, r in results.items()},
        "timed": "first chunk published -> the collector holds an 'applied' event of the new version from every agent",
        **load_settings(load_at_start),
    }
    write_results("mqtt_rollout", rows, out=args.out, settings=settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

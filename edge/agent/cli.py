"""``python -m edge.agent`` / ``fedge agent``: run one device agent until Ctrl-C (argparse only, so a device needs
neither typer nor rich)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from edge.agent.config import RUNTIMES, AgentConfig, AgentLimits
from edge.agent.errors import AgentError
from edge.agent.protocol import BrokerAddress, check_id


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m edge.agent",
        description=(
            "The fedge device agent: receives signed models over MQTT, verifies and swaps them atomically, runs "
            "inference on a file of samples and reports telemetry. Stop with Ctrl-C."
        ),
    )
    p.add_argument("--broker", required=True, help="mqtt://[user:password@]host[:port] or mqtts://... (TLS)")
    p.add_argument("--device-id", required=True, help="this device's id: 1-64 characters of [a-z0-9-]")
    p.add_argument("--store", required=True, type=Path, help="directory of the model store (created if missing)")
    p.add_argument("--runtime", choices=sorted(RUNTIMES), default="onnx", help="onnx (onnxruntime) or tflite (LiteRT)")
    p.add_argument(
        "--trust",
        type=Path,
        action="append",
        default=[],
        help="server public key to trust (PEM from `fedge keygen`; repeatable; default: STORE/trusted.pub)",
    )
    p.add_argument("--data", type=Path, help=".npz of samples to run inference on: 'x' and optional labels 'y'")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between telemetry messages (default 2)")
    p.add_argument("--samples", type=int, default=32, help="inferences per telemetry message (default 32)")
    p.add_argument("--ca", type=Path, help="CA certificate for mqtts://")
    p.add_argument("--max-model-mb", type=float, default=64.0, help="largest model accepted, MB (default 64)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every update step")
    return p


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    check_id("device id", args.device_id)
    trust = tuple(args.trust) or (args.store / "trusted.pub",)
    limits = AgentLimits(max_model_bytes=int(args.max_model_mb * 1024 * 1024))
    return AgentConfig(
        device_id=args.device_id,
        broker=BrokerAddress.parse(args.broker),
        store=args.store,
        runtime=args.runtime,
        trusted_keys=trust,
        data=args.data,
        report_interval_s=args.interval,
        samples_per_report=args.samples,
        ca_file=args.ca,
        limits=limits,
    )


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    from edge.agent.service import AgentService

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        service = AgentService(config_from_args(args)).start()
    except AgentError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"agent {args.device_id} ({args.runtime}) on {service.config.broker.url()}; Ctrl-C stops it", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    service.stop()
    return 0

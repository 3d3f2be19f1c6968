"""``python -m edge.agent`` / ``fedge agent``: run one device agent until Ctrl-C.

:func:`main` parses the agent's own argv (argparse: what a device runs); :func:`agent_argv` builds that argv from typed
options, and is what ``fedge agent``, the demo and the tests use to start an agent, so the three never drift apart.
:data:`app` holds the ``fedge agent`` command, added to the root ``fedge`` command by :mod:`simulations.cli`.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

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
    p.add_argument("--device-id", required=True, help="this device's id: 1-64 lowercase letters, digits or '-'")
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


def agent_argv(
    *,
    broker_url: str,
    device_id: str,
    store: Path,
    runtime: str = "onnx",
    trust: Sequence[Path] = (),
    data: Path | None = None,
    interval: float | None = None,
    samples: int | None = None,
    ca: Path | None = None,
    max_model_mb: float | None = None,
    verbose: bool = False,
) -> list[str]:
    """The argv of :func:`main` for these options (``None``: the agent's own default)."""
    argv = ["--broker", broker_url, "--device-id", device_id, "--store", str(store), "--runtime", runtime]
    for key in trust:
        argv += ["--trust", str(key)]
    for flag, value in (
        ("--data", data),
        ("--interval", interval),
        ("--samples", samples),
        ("--ca", ca),
        ("--max-model-mb", max_model_mb),
    ):
        if value is not None:
            argv += [flag, str(value)]
    if verbose:
        argv.append("--verbose")
    return argv


def agent_command(**options) -> list[str]:
    """The command line that runs an agent as its own process with this interpreter (see :func:`agent_argv`)."""
    return [sys.executable, "-m", "edge.agent", *agent_argv(**options)]


app = typer.Typer()


@app.command()
def agent(
    broker_url: Annotated[
        str, typer.Option("--broker", help="mqtt://[user:password@]host[:port] or mqtts://... (TLS).")
    ],
    device_id: Annotated[str, typer.Option(help="This device's id: 1-64 lowercase letters, digits or '-'.")],
    store: Annotated[Path, typer.Option(help="Directory of the model store (created if missing).")],
    runtime: Annotated[str, typer.Option(help="onnx (onnxruntime) or tflite (LiteRT).")] = "onnx",
    trust: Annotated[
        list[Path] | None,
        typer.Option(help="Server public key to trust (from `fedge keygen`; repeatable; default STORE/trusted.pub)."),
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help=".npz of samples to run inference on: 'x' and optional labels 'y'.")
    ] = None,
    interval: Annotated[float, typer.Option(help="Seconds between telemetry messages.")] = 2.0,
    samples: Annotated[int, typer.Option(help="Inferences per telemetry message.")] = 32,
    ca: Annotated[Path | None, typer.Option(help="CA certificate for mqtts://.")] = None,
    max_model_mb: Annotated[float, typer.Option(help="Largest model accepted, MB.")] = 64.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every update step.")] = False,
) -> None:
    """Run one device agent until Ctrl-C: receive signed models, verify and swap them, run inference, report.

    The same as `python -m edge.agent` (what a device runs: `pip install "fedge[agent]"` brings no torch).
    """
    code = main(
        agent_argv(
            broker_url=broker_url,
            device_id=device_id,
            store=store,
            runtime=runtime,
            trust=trust or (),
            data=data,
            interval=interval,
            samples=samples,
            ca=ca,
            max_model_mb=max_model_mb,
            verbose=verbose,
        )
    )
    if code:
        raise typer.Exit(code)

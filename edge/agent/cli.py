"""``python -m edge.agent`` / ``fedge agent``: run one device agent until Ctrl-C.

:func:`main` parses the agent's own argv (argparse: what a device runs); :func:`agent_argv` builds that argv from typed
options, and is what ``fedge agent``, the demo and the tests use to start an agent, so the three never drift apart.
:data:`app` holds the ``fedge agent`` command, added to the root ``fedge`` command by :mod:`simulations.cli`; it is
built on first use (a module ``__getattr__``), so ``python -m edge.agent`` on a device imports neither typer nor rich.

The broker password never goes on a command line (``ps`` shows it to every user of the device): it comes from the
``FEDGE_BROKER_PASSWORD`` environment variable or from ``--password-file`` (a file only its owner may read).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import stat
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from edge.agent.config import RUNTIMES, AgentConfig, AgentLimits
from edge.agent.errors import AgentConfigError, AgentError
from edge.agent.protocol import BrokerAddress, check_id

if TYPE_CHECKING:  # at run time typer is imported only when the fedge command is built (see _typer_app)
    import typer

#: the environment variable that carries the broker password (never the command line)
PASSWORD_ENV = "FEDGE_BROKER_PASSWORD"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m edge.agent",
        description=(
            "The fedge device agent: receives signed models over MQTT, verifies and swaps them atomically, runs "
            "inference on a file of samples and reports telemetry. Stop with Ctrl-C."
        ),
    )
    p.add_argument(
        "--broker",
        required=True,
        help=f"mqtt://[user@]host[:port] or mqtts://... (TLS); the password from ${PASSWORD_ENV} or --password-file",
    )
    p.add_argument("--password-file", type=Path, help="file holding the broker password (mode 0600)")
    p.add_argument("--device-id", required=True, help="this device's id: 1-64 lowercase letters, digits or '-'")
    p.add_argument("--store", required=True, type=Path, help="directory of the model store (created if missing)")
    p.add_argument(
        "--model-id",
        dest="model_ids",
        action="append",
        required=True,
        help="a model id this device runs (repeatable); manifests for any other model are refused",
    )
    p.add_argument("--group", help="the device group this device belongs to (manifests may name a group)")
    p.add_argument("--runtime", choices=sorted(RUNTIMES), default="onnx", help="onnx (onnxruntime) or tflite (LiteRT)")
    p.add_argument(
        "--trust",
        type=Path,
        action="append",
        default=[],
        help="server public key to trust (PEM from `fedge keygen`; repeatable; default: STORE/trusted.pub)",
    )
    p.add_argument(
        "--trust-root",
        type=Path,
        help="root public key (`fedge keygen --root`): the signing keys of its newest signed key set are trusted",
    )
    p.add_argument("--data", type=Path, help=".npz of samples to run inference on: 'x' and optional labels 'y'")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between telemetry messages (default 2)")
    p.add_argument("--samples", type=int, default=32, help="inferences per telemetry message (default 32)")
    p.add_argument("--ca", type=Path, help="CA certificate for mqtts://")
    p.add_argument("--max-model-mb", type=float, default=64.0, help="largest model accepted, MB (default 64)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every update step")
    return p


def read_password_file(path: Path) -> str:
    """The broker password from a file that only its owner may read (the first line)."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise AgentConfigError(f"cannot read the password file {path}: {e}") from e
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AgentConfigError(f"{path} may be read by other users: chmod 600 {path}")
    return text.splitlines()[0] if text else ""


def broker_with_password(url: str, password_file: Path | None, environ: dict[str, str] | None = None) -> BrokerAddress:
    """The broker address with its password from ``--password-file`` or ``$FEDGE_BROKER_PASSWORD``; a password in
    the URL is refused (on a command line, ``ps`` shows it)."""
    address = BrokerAddress.parse(url)
    if address.password:
        raise AgentConfigError(
            f"the broker URL carries a password, which every user sees in `ps`: drop it from --broker and set "
            f"{PASSWORD_ENV} or pass --password-file FILE (mode 0600)"
        )
    environ = os.environ if environ is None else environ
    password = read_password_file(password_file) if password_file else environ.get(PASSWORD_ENV)
    return dataclasses.replace(address, password=password or None)


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    check_id("device id", args.device_id)
    trust = tuple(args.trust) or (() if args.trust_root else (args.store / "trusted.pub",))
    limits = AgentLimits(max_model_bytes=int(args.max_model_mb * 1024 * 1024))
    return AgentConfig(
        device_id=args.device_id,
        broker=broker_with_password(args.broker, args.password_file),
        store=args.store,
        model_ids=tuple(args.model_ids),
        group=args.group,
        runtime=args.runtime,
        trusted_keys=trust,
        trust_root=args.trust_root,
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
    model_ids: Sequence[str],
    runtime: str = "onnx",
    trust: Sequence[Path] = (),
    trust_root: Path | None = None,
    group: str | None = None,
    password_file: Path | None = None,
    data: Path | None = None,
    interval: float | None = None,
    samples: int | None = None,
    ca: Path | None = None,
    max_model_mb: float | None = None,
    verbose: bool = False,
) -> list[str]:
    """The argv of :func:`main` for these options (``None``: the agent's own default). A broker URL with a password
    is refused: pass ``password_file`` or set ``$FEDGE_BROKER_PASSWORD`` in the agent's environment."""
    if BrokerAddress.parse(broker_url).password:
        raise AgentConfigError(
            f"the broker URL carries a password: it would show in `ps`; use password_file or ${PASSWORD_ENV}"
        )
    argv = ["--broker", broker_url, "--device-id", device_id, "--store", str(store), "--runtime", runtime]
    for model_id in model_ids:
        argv += ["--model-id", model_id]
    for key in trust:
        argv += ["--trust", str(key)]
    for flag, value in (
        ("--trust-root", trust_root),
        ("--group", group),
        ("--password-file", password_file),
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


def __getattr__(name: str) -> Any:
    """``app`` (the ``fedge agent`` Typer command) is built on first use: a device never imports typer."""
    if name == "app":
        return _typer_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _typer_app() -> Any:
    import typer

    globals()["typer"] = typer  # the command's annotations name typer; they are read when the command is added
    app = typer.Typer()
    app.command()(agent)
    return app


def agent(
    broker_url: Annotated[
        str,
        typer.Option(
            "--broker",
            help=f"mqtt://\\[user@]host[:port] or mqtts://... (TLS); the password from ${PASSWORD_ENV}.",
        ),
    ],
    device_id: Annotated[str, typer.Option(help="This device's id: 1-64 lowercase letters, digits or '-'.")],
    store: Annotated[Path, typer.Option(help="Directory of the model store (created if missing).")],
    model_id: Annotated[list[str], typer.Option(help="A model id this device runs (repeatable); others are refused.")],
    runtime: Annotated[str, typer.Option(help="onnx (onnxruntime) or tflite (LiteRT).")] = "onnx",
    trust: Annotated[
        list[Path] | None,
        typer.Option(help="Server public key to trust (`fedge keygen`; repeatable; default STORE/trusted.pub)."),
    ] = None,
    trust_root: Annotated[
        Path | None, typer.Option(help="Root public key (`fedge keygen --root`): trust its signed key sets.")
    ] = None,
    group: Annotated[str | None, typer.Option(help="The device group this device belongs to.")] = None,
    password_file: Annotated[Path | None, typer.Option(help="File holding the broker password (mode 0600).")] = None,
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

    The same as `python -m edge.agent` (what a device runs: `pip install "fedge\\[agent]"` brings no torch).
    """
    code = main(
        agent_argv(
            broker_url=broker_url,
            device_id=device_id,
            store=store,
            runtime=runtime,
            trust=trust or (),
            model_ids=model_id,
            trust_root=trust_root,
            group=group,
            password_file=password_file,
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

"""``fedge node``: join a federation as a node (flower-supernode) with this node's data, device and key.

Thin: the logic lives in :mod:`client.node`. Its :data:`app` is added to the root ``fedge`` command by
:mod:`simulations.cli`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from client.supernode import IDLE_POLL_START

err = Console(stderr=True)
app = typer.Typer()


@app.command("node")
def node(
    superlink: Annotated[str, typer.Option(help="The server's address, HOST:PORT.")],
    data: Annotated[Path, typer.Option(help="This node's CSV file (or data directory).")],
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu or cuda.")] = "auto",
    name: Annotated[
        str | None, typer.Option(help="This node's name in the ledger (default: the data file's name).")
    ] = None,
    ca: Annotated[
        Path | None, typer.Option(help="The federation's CA certificate (ca.crt from `fedge certs`).")
    ] = None,
    auth_key: Annotated[
        Path | None, typer.Option(help="This node's private key (NAME.key from `fedge node-keys`).")
    ] = None,
    state_dir: Annotated[
        Path | None, typer.Option(help="Where this node keeps its privacy accountant between restarts.")
    ] = None,
    runtime_port: Annotated[
        int, typer.Option(help="Local port for Flower's node runtime; differ per node on one machine.")
    ] = 9094,
    insecure: Annotated[bool, typer.Option(help="No TLS: only on a trusted test network.")] = False,
    max_wait_time: Annotated[
        float | None, typer.Option(help="Give up after this many seconds without the server (default: never).")
    ] = None,
    join_attempts: Annotated[
        int,
        typer.Option(
            help="Tries to join before giving up when the SuperLink refuses: a node restarted right after a "
            "crash is refused until its old session expires (about a minute)."
        ),
    ] = 4,
    threads: Annotated[
        int,
        typer.Option(
            help="CPU threads per training process (0: torch's default, one per core). Use 1 when several "
            "nodes share a small machine: small models train faster without threads fighting for cores."
        ),
    ] = 0,
    idle_poll_start: Annotated[
        float,
        typer.Option(
            help="Seconds before the node asks the server again for its next message after one; each empty "
            "answer makes the wait 1.25x longer, up to Flower's 3 s (Flower alone always waits 3 s, so every "
            "message of a round waits up to 3 s). 3 polls as Flower does."
        ),
    ] = IDLE_POLL_START,
    warm: Annotated[
        bool,
        typer.Option(
            "--warm/--cold",
            help="Fork each message's ClientApp process from a warm process that imported torch, Opacus and "
            "Flower once (--warm), or let Flower start it from scratch (--cold). Each message gets its own "
            "process either way.",
        ),
    ] = True,
) -> None:
    """Join a federation as a node (flower-supernode) with this node's data, device and key."""

    from client.node import NodeError, NodeSettings, join_federation, node_environment
    from server.credentials import check_private_key
    from server.deployment import flower_env, flower_executable
    from server.processes import run_in_foreground

    node_name = name or data.stem.replace("processed.", "")
    settings = NodeSettings(
        superlink=superlink,
        data_path=data,
        name=node_name,
        device=device,
        state_dir=state_dir or Path.home() / ".fedge" / "nodes" / node_name,
        ca_certificate=ca,
        auth_key=check_private_key(auth_key) if auth_key else None,
        insecure=insecure,
        runtime_port=runtime_port,
        max_wait_time=max_wait_time,
        idle_poll_start=idle_poll_start,
    )
    if threads < 0:
        raise NodeError(f"--threads must be >= 0, got {threads}")
    env = flower_env()
    if threads:  # inherited by every ClientApp process the SuperNode starts
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with node_environment(env, flower_clientapp=flower_executable("flwr-clientapp"), warm=warm) as node_env:
        join_federation(
            settings,
            settings.command(flower_executable("flower-supernode")),
            lambda command: run_in_foreground(command, node_env),
            join_attempts=join_attempts,
            say=err.print,
        )

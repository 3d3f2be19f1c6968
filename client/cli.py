"""``fedge node``: join a federation as a node (flower-supernode) with this node's data, device and key.

Thin: the logic lives in :mod:`client.node`. Its :data:`app` is added to the root ``fedge`` command by
:mod:`simulations.cli`.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

err = Console(stderr=True)
app = typer.Typer()


def _run_supernode(command: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run ``flower-supernode`` in the foreground, passing its log through; (exit code, last lines of its log)."""
    from server.processes import stop_tree

    proc = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,  # its group holds the flower-superexec it starts, even once orphaned
    )
    tail: list[str] = []

    def relay() -> None:  # Flower's log, passed through; its exit codes are only in the text
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            tail[:] = [*tail[-49:], line]

    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    try:
        code = proc.wait()
    finally:
        stop_tree(proc, kill=True)  # the flower-superexec child outlives the SuperNode
        reader.join(timeout=5)
    return code, "".join(tail)


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
) -> None:
    """Join a federation as a node (flower-supernode) with this node's data, device and key."""

    from client.node import REFUSED_EXIT_CODES, NodeError, NodeSettings, explain_exit, flower_exit_code
    from server.credentials import check_private_key
    from server.deployment import flower_env, flower_executable

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
    )
    if threads < 0:
        raise NodeError(f"--threads must be >= 0, got {threads}")
    env = flower_env()
    if threads:  # inherited by every ClientApp process the SuperNode starts
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    for attempt in range(1, max(1, join_attempts) + 1):
        code, log = _run_supernode(settings.command(flower_executable("flower-supernode")), env)
        flower_code = flower_exit_code(log, default=code)
        if flower_code not in REFUSED_EXIT_CODES or attempt >= join_attempts:
            break
        err.print(f"the SuperLink refused this node (attempt {attempt} of {join_attempts}); retrying in 20 s")
        time.sleep(20)
    if code:
        raise NodeError(explain_exit(flower_code, settings))

"""``fedge server``, ``fedge run``, ``fedge certs``, ``fedge node-keys``: the server side of a federation of real nodes
on Flower's Deployment Engine. Thin: the logic lives in ``server/deployment.py`` and ``server/credentials.py``.
Its :data:`app` is added to the root ``fedge`` command by :mod:`simulations.cli` (``fedge node`` is in
:mod:`client.cli`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from server.deployment import DeploymentError

err = Console(stderr=True)
out = Console()


def _run_config(
    config: str | None, settings: list[str], resume: Path | None, rounds: int | None, runs_dir: str | None
) -> dict[str, Any]:
    from server.deployment import check_server_data
    from simulations.experiment import deployment_experiment

    experiment = deployment_experiment(
        experiment=config,
        resume=resume,
        overrides=settings,
        settings={"num-server-rounds": rounds, "runs-dir": runs_dir},
    )
    if resume is None:
        check_server_data(
            experiment.run_config, experiment=experiment.name if config else "", description=experiment.description
        )
    return experiment.run_config


app = typer.Typer()


@app.command("certs")
def certs(
    out_dir: Annotated[
        Path, typer.Option("--out", help="Directory for ca.crt, ca.key, server.pem, server.key.")
    ] = Path("certs"),
    host: Annotated[
        list[str] | None,
        typer.Option("--host", help="Name or IP address the nodes dial to reach the server (repeatable)."),
    ] = None,
    days: Annotated[int, typer.Option(help="Validity in days.")] = 365,
    force: Annotated[
        bool,
        typer.Option("--force", help="Replace certificates already in --out (nodes then need the new ca.crt)."),
    ] = False,
) -> None:
    """Make a test CA and a SuperLink TLS certificate signed by it (give ca.crt to every node and to `fedge run`).

    For a test federation or a pilot; in production use your organisation's CA.
    """
    from server.credentials import make_test_certificates

    files = make_test_certificates(out_dir, hosts=host or ["localhost", "127.0.0.1"], days=days, overwrite=force)
    out.print(f"CA certificate (share with nodes): {files.ca_certificate}")
    out.print(f"server certificate and key (keep on the server): {files.server_certificate}, {files.server_key}")


@app.command("node-keys")
def node_keys(
    names: Annotated[list[str], typer.Argument(help="One name per node, e.g. hospital-a hospital-b iot-1.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for NAME.key and NAME.pub.")] = Path("keys"),
    force: Annotated[
        bool, typer.Option("--force", help="Replace key pairs already in --out (update the allow-list too).")
    ] = False,
) -> None:
    """Make one ECDSA P-384 key pair per node for SuperNode authentication.

    NAME.key stays on the node (`fedge node --auth-key`); NAME.pub goes on the server's allow-list
    (`fedge server --allow`). In production each node makes its own pair so its private key never travels.
    """
    from server.credentials import make_node_keys

    for key in make_node_keys(out_dir, names, overwrite=force):
        out.print(f"{key.name}: private {key.private} (node only), public {key.public} (server allow-list)")


@app.command("server")
def server(
    state_dir: Annotated[
        Path, typer.Option("--dir", help="Server state: the SuperLink database, installed apps, logs.")
    ] = Path("fedge-server"),
    host: Annotated[str, typer.Option(help="Interface to listen on (0.0.0.0 for other machines).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the SuperLink (Fleet, Control and Runtime APIs).")] = 9092,
    certs: Annotated[
        Path | None, typer.Option(help="Directory from `fedge certs` (ca.crt, server.pem, server.key).")
    ] = None,
    allow: Annotated[
        list[Path] | None,
        typer.Option("--allow", help="A node's public key (NAME.pub) to put on the allow-list (repeatable)."),
    ] = None,
    insecure: Annotated[bool, typer.Option(help="No TLS: only on a trusted test network.")] = False,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="Let any node connect (no allow-list): only for tests.")
    ] = False,
    log_file: Annotated[Path | None, typer.Option(help="Write the SuperLink's log here.")] = None,
) -> None:
    """Start the federation's server (flower-superlink) with TLS, a state database on disk and node
    authentication, register the allowed nodes' public keys, and serve until Ctrl-C."""
    from server.credentials import check_public_key
    from server.deployment import SuperLinkSettings, register_nodes, start_superlink
    from server.processes import stop_tree

    keys = [check_public_key(p) for p in allow or []]
    if keys and no_auth:
        raise DeploymentError("--allow and --no-auth contradict each other: the allow-list is node authentication")
    settings = SuperLinkSettings(
        state_dir=state_dir.resolve(),
        host=host,
        port=port,
        ca_certificate=certs / "ca.crt" if certs else None,
        server_certificate=certs / "server.pem" if certs else None,
        server_key=certs / "server.key" if certs else None,
        insecure=insecure,
        authenticate_nodes=not no_auth,
    )
    proc = start_superlink(settings, log_file=log_file)
    try:
        for key, node_id in register_nodes(settings, keys).items():
            out.print(f"allowed {key.name} (node id {node_id})")
        out.print(
            f"[bold]SuperLink up[/] at {settings.address} ({'insecure' if insecure else 'TLS'}, "
            f"{'no node authentication' if no_auth else 'registered nodes only'}); state in {settings.state_dir}. "
            "Ctrl-C stops it."
        )
        code = proc.wait()
    except KeyboardInterrupt:
        stop_tree(proc)
        raise
    except BaseException:
        stop_tree(proc)
        raise
    if code:
        raise DeploymentError(
            f"flower-superlink exited with code {code}; see its log{f' in {log_file}' if log_file else ''}"
        )


@app.command("run")
def run(
    superlink: Annotated[str, typer.Option(help="The server's address, HOST:PORT.")] = "127.0.0.1:9092",
    ca: Annotated[Path | None, typer.Option(help="The federation's CA certificate (ca.crt).")] = None,
    insecure: Annotated[bool, typer.Option(help="No TLS: only on a trusted test network.")] = False,
    config: Annotated[
        str | None, typer.Option("--config", "-c", help="Experiment name or TOML file (default: pyproject's).")
    ] = None,
    setting: Annotated[
        list[str] | None, typer.Option("--set", "-s", help="Any run setting, KEY=VALUE (repeatable).")
    ] = None,
    rounds: Annotated[int | None, typer.Option("--rounds", "-r", help="Number of federated rounds.")] = None,
    runs_dir: Annotated[str | None, typer.Option(help="Where the server writes run records.")] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Continue this run directory (runs/<run-id>/) after its last round.")
    ] = None,
) -> None:
    """Submit fedge's app to a running federation (flwr run) and follow it until it ends; a run that fails on the
    server fails here too (exit code 2, with the server's reason)."""
    from server.deployment import Connection, run_on_federation

    connection = Connection(superlink=superlink, ca_certificate=ca, insecure=insecure)
    cfg = _run_config(config, list(setting or []), resume, rounds, runs_dir)
    err.print(f"submitting run {cfg['run-id']} to {superlink}" + (f" (resuming {resume})" if resume else ""))
    outcome = run_on_federation(cfg, connection, echo=lambda line: print(line, end="", flush=True))
    if outcome.run_record is None:
        out.print(f"run {cfg['run-id']} completed; the server did not say where its run record is", soft_wrap=True)
    elif Path(outcome.run_record).is_dir():
        out.print(f"run record: {outcome.run_record}", soft_wrap=True)
    else:
        out.print(f"run record (on the server): {outcome.run_record}", soft_wrap=True)

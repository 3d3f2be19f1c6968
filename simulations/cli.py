"""The ``fedge`` command: a thin layer over the packages; the logic lives in them.

Every error fedge raises on purpose (:class:`FedgeError`) is shown as one clear message, exit code 2, with no
traceback; ``--verbose`` shows Flower's own logs.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.markup import escape  # noqa: E402
from rich.table import Table  # noqa: E402

from shared_models.errors import FedgeError  # noqa: E402

app = typer.Typer(
    name="fedge",
    help=(
        "fedge: federated learning that ends on edge devices. Train a shared PyTorch model across many clients "
        "with Flower, with differential privacy (Opacus) on every client."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)

# Which extra brings a module a command needs: everything but the CLI itself is optional (see pyproject.toml).
EXTRA_OF_MODULE = {
    **dict.fromkeys(("torch", "flwr", "opacus", "sklearn", "matplotlib", "ray"), "train"),
    **dict.fromkeys(("onnx", "onnxscript"), "export"),
    "litert_torch": "tflite",
    **dict.fromkeys(("paho", "cryptography", "onnxruntime", "ai_edge_litert"), "agent"),
    **dict.fromkeys(("dacite", "passlib", "yaml", "transitions", "websockets"), "broker"),
}


def missing_extra_message(error: ModuleNotFoundError) -> str | None:
    """For a module one of fedge's extras brings, the line that says which extra to install; else ``None``."""
    root = (error.name or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(root)
    if extra is None:
        return None
    return (
        f'this command needs {root}, which comes with the {extra!r} extra: pip install "fedge[{extra}]" '
        f'(from a checkout: pip install -e ".[{extra}]")'
    )


@app.command()
def simulate(
    config: Annotated[
        str, typer.Option("--config", "-c", help="Experiment name (see `fedge experiments`) or path to a TOML file.")
    ] = "digits-dp",
    num_clients: Annotated[
        int | None, typer.Option("--num-clients", "-n", help="Number of simulated clients (SuperNodes).")
    ] = None,
    rounds: Annotated[int | None, typer.Option("--rounds", "-r", help="Number of federated rounds.")] = None,
    strategy: Annotated[
        str | None,
        typer.Option(help="Flower strategy: fedavg, fedprox, fedadam, fedyogi, fedmedian, fedtrimmedavg, krum."),
    ] = None,
    dp: Annotated[bool | None, typer.Option("--dp/--no-dp", help="Differential privacy on every client.")] = None,
    target_epsilon: Annotated[
        float | None, typer.Option(help="Each client's privacy budget ε for the whole run (δ from target-delta).")
    ] = None,
    data_path: Annotated[str | None, typer.Option(help="Data directory (MNIST IDX files) or CSV file.")] = None,
    runs_dir: Annotated[str | None, typer.Option(help="Where run records go (default: runs/).")] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(help="Join an existing Ray cluster (e.g. 'auto' or 'HOST:6379') instead of starting one."),
    ] = None,
    client_cpus: Annotated[float | None, typer.Option(help="CPU cores reserved per simulated client.")] = None,
    client_gpus: Annotated[float | None, typer.Option(help="GPU share per simulated client (e.g. 0.25).")] = None,
    setting: Annotated[
        list[str] | None, typer.Option("--set", "-s", help="Any run setting, KEY=VALUE (repeatable).")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Flower's and Ray's logs.")] = False,
) -> None:
    """Run an experiment on Flower's simulation engine and write its run record under runs/<run-id>/."""
    from simulations.experiment import apply_overrides, load_experiment
    from simulations.simulate import run_experiment

    experiment = load_experiment(config)
    overrides = list(setting or [])
    for key, value in (
        ("num-server-rounds", rounds),
        ("strategy", strategy),
        ("dp", dp),
        ("target-epsilon", target_epsilon),
        ("data-path", data_path),
        ("runs-dir", runs_dir),
    ):
        if value is not None:
            overrides.append(f"{key}={value}")
    apply_overrides(experiment, overrides)
    if num_clients is not None:
        experiment.num_supernodes = num_clients
    if ray_address is not None:
        experiment.ray_address = ray_address
    if client_cpus is not None:
        experiment.client_num_cpus = client_cpus
    if client_gpus is not None:
        experiment.client_num_gpus = client_gpus
    summary = run_experiment(experiment, verbose=verbose)
    table = Table(title=f"run {os.path.basename(summary['run-dir'])}")
    for column in ("round", "accuracy", "loss", "trained", "refused", "max ε"):
        table.add_column(column, justify="right")
    for r in summary["rounds"]:
        eps = r.get("epsilon-max")
        table.add_row(
            str(r["round"]),
            f"{r['central-accuracy']:.3f}",
            f"{r['central-loss']:.3f}",
            str(r.get("clients-trained", "")),
            str(r.get("clients-refused", "")),
            "" if eps is None else f"{eps:.3f}",
        )
    Console().print(table)
    Console().print(f"run record: {summary['run-dir']}")


@app.command()
def experiments() -> None:
    """List the named experiments in simulations/configs/."""
    from simulations.experiment import available_experiments, load_experiment

    table = Table(title="experiments (fedge simulate --config NAME)")
    table.add_column("name")
    table.add_column("clients", justify="right")
    table.add_column("description")
    for name in available_experiments():
        exp = load_experiment(name)
        table.add_row(name, str(exp.num_supernodes), exp.description)
    Console().print(table)


# fedge package: compress and export a run's model (edge/compress, edge/export).
from simulations.package_cmd import package  # noqa: E402

app.command()(package)


# real nodes: fedge server, node, run, certs, node-keys (simulations/deploy_cmd.py)
from simulations.deploy_cmd import register as register_deploy_commands  # noqa: E402

register_deploy_commands(app)


def main() -> None:
    """Console entry point: run the app, turning fedge's own errors into one clear line.

    SIGTERM and SIGHUP (``kill``, a closed terminal) act like Ctrl-C, so every command stops the processes it
    started (SuperLink, SuperNodes and their superexec children, brokers, agents) on its way out.
    """
    import signal

    def _interrupt(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    try:
        app()
    except FedgeError as e:
        err.print(f"[bold red]error:[/] {escape(str(e))}")
        sys.exit(2)
    except ModuleNotFoundError as e:  # an extra that is not installed (a device has only fedge[agent])
        message = missing_extra_message(e)
        if message is None:
            raise
        err.print(f"[bold red]error:[/] {escape(message)}")
        sys.exit(2)
    except OSError as e:  # a file or folder that cannot be read or written: say which, no traceback
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        err.print(f"[bold red]error:[/] {escape(str(e.strerror or e) + where)}; check the path and its permissions")
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        sys.exit(130)


# edge delivery: fedge broker, agent, keygen, publish, fleet, demo (simulations/edge_cmd.py)
from simulations.edge_cmd import register as register_edge_commands  # noqa: E402

register_edge_commands(app)


if __name__ == "__main__":
    main()

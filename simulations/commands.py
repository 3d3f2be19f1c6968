"""``fedge simulate``, ``fedge experiments`` and ``fedge demo``: the commands that drive ``simulations/``.

Thin: the logic lives in :mod:`simulations.experiment`, :mod:`simulations.simulate` and :mod:`simulations.demo`.
Its :data:`app` is added to the root ``fedge`` command by :mod:`simulations.cli`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer()


@app.command()
def simulate(
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            "-c",
            help="Experiment name (see `fedge experiments`), path to a TOML file, or a project's pyproject.toml. "
            "Default: the project in this directory (made by fedge new), else digits-dp.",
        ),
    ] = None,
    num_clients: Annotated[
        int | None, typer.Option("--num-clients", "-n", help="Number of simulated clients (SuperNodes).")
    ] = None,
    rounds: Annotated[int | None, typer.Option("--rounds", "-r", help="Number of federated rounds.")] = None,
    strategy: Annotated[
        str | None,
        typer.Option(
            help="Flower strategy: fedavg, fedprox, fedadam, fedyogi, fedmedian, fedtrimmedavg, krum, qfedavg."
        ),
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
    fix_model: Annotated[
        bool | None,
        typer.Option(
            "--fix-model/--no-fix-model",
            help="Replace the layers DP-SGD cannot train (BatchNorm -> GroupNorm, LSTM/GRU/RNN -> Opacus's DP "
            "versions), naming each (run setting dp-fix-model).",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Flower's and Ray's logs.")] = False,
) -> None:
    """Run an experiment on Flower's simulation engine and write its run record under runs/<run-id>/."""
    from simulations.experiment import apply_overrides, apply_settings, load_experiment, project_experiment_file
    from simulations.simulate import run_experiment

    experiment = load_experiment(config or str(project_experiment_file() or "digits-dp"))
    apply_overrides(experiment, setting or [])
    typed = {
        "num-server-rounds": rounds,
        "strategy": strategy,
        "dp": dp,
        "target-epsilon": target_epsilon,
        "dp-fix-model": fix_model,
    }
    apply_settings(experiment, {**typed, "data-path": data_path, "runs-dir": runs_dir})
    if num_clients is not None:
        experiment.num_supernodes = num_clients
    if ray_address is not None:
        experiment.ray_address = ray_address
    if client_cpus is not None:
        experiment.client_num_cpus = client_cpus
    if client_gpus is not None:
        experiment.client_num_gpus = client_gpus
    summary = run_experiment(experiment, verbose=verbose)
    Console().print(summary_table(summary))
    stopped = (summary.get("privacy") or {}).get("stopped")
    if stopped:
        Console().print(f"[bold]stopped early[/]: {stopped['reason']}", soft_wrap=True)
    Console().print(f"run record: {summary['run-dir']}")


def summary_table(summary: dict) -> Table:
    """fedge simulate's table: per round the central accuracy and loss, who trained and refused, ε, and where the
    nodes evaluated the model (fraction-evaluate > 0) the worst site, the spread and the sites below the threshold."""
    per_site = any(r.get("sites") for r in summary["rounds"])
    table = Table(title=f"run {os.path.basename(summary['run-dir'])}")
    columns = ["round", "accuracy", "loss", "trained", "refused", "max ε"]
    columns += ["worst site", "spread", "below threshold"] if per_site else []
    for column in columns:
        table.add_column(column, justify="left" if column in ("worst site", "below threshold") else "right")
    for r in summary["rounds"]:
        eps = r.get("epsilon-max")
        row = [
            str(r["round"]),
            f"{r['central-accuracy']:.3f}",
            f"{r['central-loss']:.3f}",
            str(r.get("clients-trained", "")),
            str(r.get("clients-refused", "")),
            "" if eps is None else f"{eps:.3f}",
        ]
        if per_site:
            worst = r.get("worst-site")
            row += (
                [
                    f"{worst} {r['worst-site-accuracy']:.3f}",
                    f"{r['site-accuracy-spread']:.3f}",
                    ", ".join(r.get("sites-below-threshold") or []) or "-",
                ]
                if worst is not None
                else ["", "", ""]
            )
        table.add_row(*row)
    return table


@app.command()
def new(
    directory: Annotated[Path, typer.Argument(help="The project directory to create (its name names the package).")],
    template: Annotated[
        str,
        typer.Option("--template", "-t", help="image (digits as PNG files), tabular (a CSV), timeseries (sensors)."),
    ] = "image",
    force: Annotated[bool, typer.Option(help="Write into a directory that already has files.")] = False,
) -> None:
    """Write a runnable fedge project: pyproject.toml (a Flower App naming fedge's ServerApp and ClientApp), a package
    with task.py (your model factory and data loader) and its data, and a README. Then, inside it: fedge simulate."""
    from simulations.new_project import create_project

    project = create_project(directory, template=template, force=force)
    Console().print(
        f"created {project.directory} ({project.template} template, package {project.package}): "
        f"cd {project.directory} && fedge simulate",
        soft_wrap=True,
    )


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


@app.command()
def demo(
    config: Annotated[
        str, typer.Option("--config", "-c", help="The experiment to train (`fedge experiments`).")
    ] = "digits-dp",
    num_clients: Annotated[int | None, typer.Option("--num-clients", "-n", help="Simulated clients.")] = None,
    rounds: Annotated[int | None, typer.Option("--rounds", "-r", help="Federated rounds.")] = None,
    devices: Annotated[int, typer.Option(help="Device agents to start (separate processes; runtimes alternate).")] = 4,
    runtimes: Annotated[
        str, typer.Option(help="Runtimes the agents take in turn: onnx, tflite or onnx,tflite.")
    ] = "onnx,tflite",
    canary: Annotated[float, typer.Option(help="Share of the devices that get the int8 model first.")] = 0.25,
    telemetry_seconds: Annotated[float, typer.Option(help="Seconds of telemetry collected after the rollout.")] = 8.0,
    interval: Annotated[float, typer.Option(help="Seconds between two telemetry messages of an agent.")] = 1.0,
    port: Annotated[int | None, typer.Option(help="Port of the embedded broker (default: a free one).")] = None,
    runs_dir: Annotated[Path, typer.Option(help="Where the run goes (runs/<run-id>/).")] = Path("runs"),
    from_run: Annotated[
        Path | None, typer.Option(help="Skip training: package and deliver this finished run (runs/<run-id>/).")
    ] = None,
    latency_runs: Annotated[
        int, typer.Option(help="Timed calls per artifact when packaging (interleaved; a call takes tens of us).")
    ] = 1000,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Flower's and Ray's logs.")] = False,
    ui: Annotated[
        bool, typer.Option("--ui", help="Serve the live dashboard (fedge ui) during the demo and print its address.")
    ] = False,
    ui_port: Annotated[int, typer.Option(help="Port of the dashboard with --ui (0: a free one).")] = 8765,
) -> None:
    """The whole pipeline on this machine: train with DP, export, deliver to device agents, collect telemetry.

    A DP federated simulation on digits; compress and export (fp32 and int8, ONNX and TFLite); the embedded broker
    as its own process; device agents as separate processes (both runtimes); rollout of the fp32 model, then a
    staged (canary) rollout of the int8 model; telemetry; the fleet table. Everything goes under runs/<run-id>/
    (edge/ holds keys, device stores, logs, fleet.db, rollouts.json, fleet.json, demo.json). Every process it starts
    is stopped at the end, also on Ctrl-C. Exit code 1 unless every device ends on the int8 model.
    """
    from simulations.demo import DemoOptions, run_demo

    options = DemoOptions(
        experiment=config,
        num_clients=num_clients,
        rounds=rounds,
        devices=devices,
        runtimes=tuple(r.strip() for r in runtimes.split(",") if r.strip()),
        canary_fraction=canary,
        telemetry_s=telemetry_seconds,
        report_interval_s=interval,
        port=port,
        runs_dir=runs_dir,
        from_run=from_run,
        latency_runs=latency_runs,
        verbose=verbose,
        ui=ui,
        ui_port=ui_port,
    )
    summary = run_demo(options, console=Console())
    if len(summary["on_int8"]) != devices:
        raise typer.Exit(1)


@app.command()
def ui(
    runs: Annotated[Path, typer.Option("--runs", help="The runs directory to show (runs/<run-id>/ each).")] = Path(
        "runs"
    ),
    fleet: Annotated[
        str | None,
        typer.Option(
            "--fleet",
            help="The fleet database to show: a collector's SQLite file, or the postgresql://USER@HOST/DB a group of "
            "collectors writes (password from PGPASSWORD or ~/.pgpass; never shown). Default: the selected run's "
            "own edge/fleet.db.",
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on; other than loopback only with --token.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="Port to listen on (0: a free one).")] = 8765,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="FEDGE_UI_TOKEN",
            show_envvar=True,
            help="Access token every request must carry (?token= once, or Authorization: Bearer).",
        ),
    ] = None,
) -> None:
    """A live, read-only web dashboard of the runs, their artifacts, the fleet and the rollouts, until Ctrl-C.

    Runs: accuracy and privacy spent per round, the privacy ledger per client, refusals and failures. Artifacts:
    size, accuracy, agreement and latency against fp32. Fleet: devices, state, runtime, model version, last seen,
    latency, accuracy, telemetry over time; rollouts and update events. The page follows a simulation, a rollout or
    telemetry as they happen. Prometheus metrics of the fleet at /metrics.
    """
    from simulations.dashboard.server import serve

    def ready(server) -> None:
        Console().print(
            f"dashboard: [bold]{server.url}[/]"
            + (" (open it once with ?token=TOKEN)" if token else "")
            + "; Ctrl-C stops"
        )

    serve(runs, fleet, host=host, port=port, token=token, on_ready=ready)

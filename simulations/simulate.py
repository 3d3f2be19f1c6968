"""Run an experiment on Flower's simulation engine (Ray), with our ServerApp and ClientApp.

Flower's simulation is given the Flower App that ``fedge run`` also submits (``server/flower_app.py``): its
``[tool.flwr.app.config]`` is the experiment's fully resolved run config, so the ServerApp and every ClientApp read
exactly the settings that ``flwr run`` would give them. The simulation itself runs in this process through the one
private Flower call fedge makes (``simulations/flower_adapter.py``).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")

from shared_models.run_dir import RunDir  # noqa: E402
from simulations.experiment import (  # noqa: E402
    Experiment,
    ExperimentError,
    export_project_path,
    new_run_id,
    resolve_paths,
    validate,
)


def backend_config(experiment: Experiment, *, verbose: bool = False) -> dict[str, Any]:
    init_args: dict[str, Any] = {"log_to_driver": verbose}
    if experiment.ray_address:
        # Join an existing Ray cluster (`ray start --head` on one machine, `ray start --address=...` on the others).
        init_args["address"] = experiment.ray_address
    return {
        "client_resources": {"num_cpus": experiment.client_num_cpus, "num_gpus": experiment.client_num_gpus},
        "init_args": init_args,
        **experiment.extra_backend,
    }


def run_experiment(experiment: Experiment, *, verbose: bool = False) -> dict[str, Any]:
    """Validate, then run the experiment in Flower's simulation engine; return the server's summary."""
    logging.getLogger("flwr").setLevel(logging.DEBUG if verbose else logging.ERROR)
    resolve_paths(experiment)
    cfg = experiment.run_config
    new_run_id(experiment)
    export_project_path(str(cfg["project-dir"]))  # before Ray starts: its workers inherit the path
    replaced = validate(experiment)
    if replaced:
        logging.getLogger("fedge").warning("replaced for DP-SGD (dp-fix-model): %s", "; ".join(replaced))
    if cfg["max-in-flight"] == 0 and not experiment.ray_address:
        # Feed the simulation engine a few messages per Ray actor at a time instead of all at once: its search
        # for each node's next message scans every stored message (see server/rounds.py).
        actors = max(1, int((os.cpu_count() or 1) / max(experiment.client_num_cpus, 0.01)))
        cfg["max-in-flight"] = 16 * actors

    from client.client_app import app as client_app
    from server.flower_app import write_app_dir
    from server.server_app import app as server_app
    from simulations.flower_adapter import run_simulation_in_process

    run = RunDir.of(cfg["runs-dir"], cfg["run-id"])
    with tempfile.TemporaryDirectory(prefix="fedge-app-") as tmp:
        app_dir = write_app_dir(Path(tmp) / "app", cfg, name="fedge-simulation")
        try:
            run_simulation_in_process(
                server_app=server_app,
                client_app=client_app,
                run_config=cfg,
                num_supernodes=experiment.num_supernodes,
                backend_config=backend_config(experiment, verbose=verbose),
                app_dir=app_dir,
                verbose=verbose,
            )
        except RuntimeError as e:
            if isinstance(e.__cause__, ExperimentError):
                raise e.__cause__ from None
            raise
    if not run.metrics.is_file():
        raise ExperimentError(f"the simulation ended without writing {run.metrics}; rerun with --verbose to see why")
    rounds = run.read_metrics()
    return {
        "run-dir": str(run.path),
        "rounds": rounds,
        "privacy": run.read_privacy(),
        "initial-accuracy": rounds[0]["central-accuracy"],
        "final-accuracy": rounds[-1]["central-accuracy"],
    }

"""Run an experiment on Flower's simulation engine (Ray), with our ServerApp and ClientApp.

Flower's simulation is given an app directory holding a generated ``pyproject.toml`` whose
``[tool.flwr.app.config]`` is the experiment's fully resolved run config, so the ServerApp and every ClientApp
read exactly the settings that ``flwr run`` would give them from this project's pyproject.toml plus overrides.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")

from simulations.experiment import Experiment, ExperimentError, resolve_paths, validate  # noqa: E402


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def write_app_dir(directory: Path, run_config: dict[str, Any]) -> Path:
    """A minimal Flower App whose defaults are ``run_config`` (components point at this project's apps)."""
    lines = [
        "[project]",
        'name = "fedge-simulation"',
        'version = "0.1.0"',
        'description = "fedge experiment"',
        'license = "Apache-2.0"',
        "",
        "[tool.flwr.app]",
        'publisher = "fedge"',
        "",
        "[tool.flwr.app.components]",
        'serverapp = "server.server_app:app"',
        'clientapp = "client.client_app:app"',
        "",
        "[tool.flwr.app.config]",
        *(f"{key} = {_toml_value(value)}" for key, value in run_config.items()),
    ]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pyproject.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


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
    if not cfg.get("run-id"):
        cfg["run-id"] = f"{experiment.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    validate(experiment)
    if int(cfg.get("max-in-flight", 0)) == 0 and not experiment.ray_address:
        # Feed the simulation engine a few messages per Ray actor at a time instead of all at once: its search
        # for each node's next message scans every stored message (see server/rounds.py).
        actors = max(1, int((os.cpu_count() or 1) / max(experiment.client_num_cpus, 0.01)))
        cfg["max-in-flight"] = 16 * actors

    from flwr.app import Context, RecordDict
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.telemetry import EventType

    from client.client_app import app as client_app
    from server.server_app import app as server_app

    run_dir = Path(cfg["runs-dir"]) / str(cfg["run-id"])
    with tempfile.TemporaryDirectory(prefix="fedge-app-") as tmp:
        app_dir = write_app_dir(Path(tmp), cfg)
        context = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config=dict(cfg))
        try:
            _run_simulation(
                num_supernodes=experiment.num_supernodes,
                exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
                client_app=client_app,
                server_app=server_app,
                backend_name="ray",
                backend_config=backend_config(experiment, verbose=verbose),
                app_dir=str(app_dir),
                is_app=True,
                server_app_context=context,
                verbose_logging=verbose,
            )
        except RuntimeError as e:
            if isinstance(e.__cause__, ExperimentError):
                raise e.__cause__ from None
            raise
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise ExperimentError(f"the simulation ended without writing {metrics_path}; rerun with --verbose to see why")
    rounds = json.loads(metrics_path.read_text())["rounds"]
    privacy = json.loads((run_dir / "privacy.json").read_text())
    return {
        "run-dir": str(run_dir),
        "rounds": rounds,
        "privacy": privacy,
        "initial-accuracy": rounds[0]["central-accuracy"],
        "final-accuracy": rounds[-1]["central-accuracy"],
    }

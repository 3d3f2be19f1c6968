"""Named experiments: a TOML file with the number of simulated clients, the Flower run config and backend settings.

An experiment is resolved in three layers: the app's defaults (``[tool.flwr.app.config]`` in pyproject.toml,
mirrored by :data:`DEFAULT_RUN_CONFIG`), the experiment file, then the command line's overrides. Everything is
checked before Flower or Ray start, so a typo costs a second, not a cluster start-up.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.errors import ServerConfigError
from server.strategies import build_strategy
from shared_models.errors import FedgeError
from shared_models.federation import FederatedData
from shared_models.models import get_model_spec

CONFIG_DIR = Path(__file__).parent / "configs"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ExperimentError(FedgeError):
    """An experiment that cannot run as described."""


# Must stay equal to [tool.flwr.app.config] in pyproject.toml (a test checks it), so `flwr run .` and
# `fedge simulate` start from the same defaults.
DEFAULT_RUN_CONFIG: dict[str, Any] = {
    "num-server-rounds": 5,
    "strategy": "fedavg",
    "fraction-train": 1.0,
    "fraction-evaluate": 0.0,
    "min-train-nodes": 2,
    "min-evaluate-nodes": 2,
    "min-available-nodes": 2,
    "proximal-mu": 0.01,
    "server-learning-rate": 0.1,
    "server-tau": 0.001,
    "trimmed-beta": 0.2,
    "krum-malicious": 0,
    "round-timeout": 0.0,
    "max-in-flight": 0,
    "min-replies": 1,
    "straggler-timeout": 0.0,
    "resume-from": "",
    "stream-aggregation": True,
    "model": "digits-cnn",
    "dataset": "digits",
    "data-path": "",
    "label-column": "label",
    "csv-header": True,
    "csv-columns": "",
    "label-binarize-at": 0.0,
    "num-classes": 0,
    "standardize": True,
    "node-data-paths": "",
    "partitioner": "iid",
    "alpha": 0.5,
    "shards-per-client": 2,
    "test-fraction": 0.2,
    "seed": 0,
    "local-epochs": 3,
    "batch-size": 64,
    "learning-rate": 0.5,
    "learning-rate-decay": 1.0,
    "momentum": 0.0,
    "dp": True,
    "dp-mode": "ghost",
    "noise-multiplier": 0.0,
    "target-epsilon": 3.0,
    "target-delta": 1e-5,
    "max-grad-norm": 1.0,
    "device": "auto",
    "runs-dir": "runs",
    "run-id": "",
    "progress": True,
}


@dataclass
class Experiment:
    name: str
    description: str
    num_supernodes: int
    run_config: dict[str, Any]
    client_num_cpus: float = 1.0
    client_num_gpus: float = 0.0
    ray_address: str = ""
    source: Path | None = None
    extra_backend: dict[str, Any] = field(default_factory=dict)


def available_experiments() -> dict[str, Path]:
    return {p.stem: p for p in sorted(CONFIG_DIR.glob("*.toml"))}


def _coerce(key: str, text: str) -> Any:
    """Parse a ``key=value`` override to the type of the key's default."""
    if key not in DEFAULT_RUN_CONFIG:
        raise ExperimentError(f"unknown setting {key!r}; known settings: {', '.join(sorted(DEFAULT_RUN_CONFIG))}")
    default = DEFAULT_RUN_CONFIG[key]
    try:
        if isinstance(default, bool):
            if text.lower() not in {"true", "false", "1", "0", "yes", "no"}:
                raise ValueError(text)
            return text.lower() in {"true", "1", "yes"}
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        raise ExperimentError(f"{key}={text!r}: expected a {type(default).__name__}") from None
    return text


def load_experiment(name_or_path: str) -> Experiment:
    """An experiment by name (a file in ``simulations/configs/``) or by path to a TOML file."""
    path = Path(name_or_path)
    if not path.suffix:
        known = available_experiments()
        if name_or_path not in known:
            raise ExperimentError(
                f"no experiment named {name_or_path!r}; choose one of {', '.join(known)} or give a path to a TOML file"
            )
        path = known[name_or_path]
    if not path.is_file():
        raise ExperimentError(f"experiment file {path} does not exist")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ExperimentError(f"{path} is not valid TOML: {e}") from e
    run_config = dict(DEFAULT_RUN_CONFIG)
    for key, value in raw.get("run-config", {}).items():
        if key not in DEFAULT_RUN_CONFIG:
            raise ExperimentError(f"{path}: unknown setting {key!r} in [run-config]")
        run_config[key] = value
    backend = dict(raw.get("backend", {}))
    experiment = Experiment(
        name=path.stem,
        description=str(raw.get("description", "")),
        num_supernodes=int(raw.get("num-supernodes", 10)),
        run_config=run_config,
        client_num_cpus=float(backend.pop("client-num-cpus", 1.0)),
        client_num_gpus=float(backend.pop("client-num-gpus", 0.0)),
        ray_address=str(backend.pop("ray-address", "")),
        source=path,
        extra_backend=backend,
    )
    return experiment


def apply_overrides(experiment: Experiment, settings: list[str]) -> None:
    for item in settings:
        if "=" not in item:
            raise ExperimentError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        experiment.run_config[key.strip()] = _coerce(key.strip(), value.strip())


def resolve_paths(experiment: Experiment) -> None:
    """Relative data and run paths are taken from the project root (where pyproject.toml lives) if they exist
    there, else from the current directory, and made absolute: the simulation's workers may run elsewhere."""
    cfg = experiment.run_config
    for key in ("data-path", "runs-dir", "resume-from", "node-data-paths"):
        values = [v.strip() for v in str(cfg.get(key, "")).split(",")] if key == "node-data-paths" else [cfg.get(key)]
        resolved = []
        for value in values:
            if not value:
                continue
            candidate = Path(str(value)).expanduser()
            if not candidate.is_absolute():
                from_cwd = Path.cwd() / candidate
                from_root = PROJECT_ROOT / candidate
                candidate = from_cwd if (from_cwd.exists() or not from_root.exists()) else from_root
            resolved.append(str(candidate.resolve()))
        if resolved:
            cfg[key] = ",".join(resolved)


def validate(experiment: Experiment) -> None:
    """Fail fast, with the fix in the message, on anything that would fail inside the simulation."""
    cfg = experiment.run_config
    if experiment.num_supernodes < 1:
        raise ExperimentError(f"the number of clients must be at least 1, got {experiment.num_supernodes}")
    if int(cfg["num-server-rounds"]) < 1:
        raise ExperimentError(f"the number of rounds must be at least 1, got {cfg['num-server-rounds']}")
    get_model_spec(str(cfg["model"]))
    try:
        build_strategy(str(cfg["strategy"]), cfg)
    except ServerConfigError as e:
        raise ExperimentError(str(e)) from e
    min_nodes = max(int(cfg["min-train-nodes"]), int(cfg["min-available-nodes"]))
    if min_nodes > experiment.num_supernodes:
        raise ExperimentError(
            f"the strategy waits for {min_nodes} nodes but only {experiment.num_supernodes} clients are simulated; "
            "lower min-train-nodes/min-available-nodes or simulate more clients"
        )
    data = FederatedData.from_run_config(cfg)
    if data.partitioner == "natural":
        # Real nodes bring their own files (fedge node --data); a simulation of them names one file per node.
        paths = [p for p in str(cfg.get("node-data-paths", "")).split(",") if p.strip()]
        if len(paths) != experiment.num_supernodes:
            raise ExperimentError(
                "the 'natural' partitioner gives each node its own file: on real nodes with fedge node --data, in a "
                f"simulation with node-data-paths (one file per simulated node; {len(paths)} given for "
                f"{experiment.num_supernodes} nodes)"
            )
        test = data.server_test_set()
        for path in paths:
            data.client_train_set(0, 1, node_data_path=path)  # each file loads and fits the schema
    else:
        pool, test = data.split()
        # Recompute the first client's share: this checks the partitioner's settings on the real labels.
        data.client_train_set(0, experiment.num_supernodes)
    from shared_models.models import build_model

    build_model(str(cfg["model"]), input_shape=test.input_shape, num_classes=test.num_classes)

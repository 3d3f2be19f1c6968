"""Named experiments: a TOML file with the number of simulated clients, the Flower run config and backend settings.

An experiment is resolved in three layers: the app's defaults (``[tool.flwr.app.config]`` in pyproject.toml,
mirrored once by :data:`shared_models.run_config.DEFAULT_RUN_CONFIG`), the experiment file, then the command line's
overrides (``--set KEY=VALUE`` strings and typed options, checked alike). Everything is checked before Flower or
Ray start, so a typo costs a second, not a cluster start-up.
"""

from __future__ import annotations

import copy
import difflib
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.config import ServerConfig
from server.errors import ServerConfigError
from shared_models.errors import FedgeError
from shared_models.federation import FederatedData
from shared_models.registry import add_to_path, check_data_fits
from shared_models.run_config import (
    DEFAULT_RUN_CONFIG,
    RunConfigError,
    flatten_options,
    is_option_key,
    mint_run_id,
    parse_setting,
)
from shared_models.run_dir import RunDir

CONFIG_DIR = Path(__file__).parent / "configs"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ExperimentError(FedgeError):
    """An experiment that cannot run as described."""


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


#: What an experiment file may hold: top-level keys, and the keys of its [backend] table.
EXPERIMENT_KEYS = ("description", "num-supernodes", "run-config", "backend", "tool")
BACKEND_KEYS = ("client-num-cpus", "client-num-gpus", "ray-address", "init_args", "client_resources", "actor")


def _refuse_unknown(path: Path, where: str, keys: Sequence[str], known: Sequence[str]) -> None:
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ExperimentError(
                f"{path}: unknown {where} {key!r}; {hint}an experiment file holds: {', '.join(known)}"
            )


def _is_project_file(path: Path, raw: Mapping[str, Any]) -> bool:
    """A Flower App's pyproject.toml (a user's project made by fedge new), read as an experiment."""
    return path.name == "pyproject.toml" or "project" in raw or "build-system" in raw


def project_experiment_file(directory: Path | None = None) -> Path | None:
    """The pyproject.toml of the user's project in ``directory`` (the current one), if it is one: a Flower App
    with a run config that is not fedge's own pyproject."""
    candidate = (directory or Path.cwd()) / "pyproject.toml"
    if not candidate.is_file():
        return None
    try:
        raw = tomllib.loads(candidate.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return None
    if raw.get("project", {}).get("name") == "fedge":
        return None
    return candidate if "config" in raw.get("tool", {}).get("flwr", {}).get("app", {}) else None


def _run_config_table(path: Path, raw: Mapping[str, Any]) -> dict[str, Any]:
    """[run-config], or a Flower App's [tool.flwr.app.config] read the same way (both at once is an error)."""
    flower = raw.get("tool", {}).get("flwr", {}).get("app", {}).get("config")
    if not _is_project_file(path, raw):
        extra = sorted(set(raw.get("tool", {})) - {"flwr"}) or sorted(
            set(raw.get("tool", {}).get("flwr", {})) - {"app"}
        )
        if extra:
            raise ExperimentError(
                f"{path}: unknown table [tool.{extra[0]}]; an experiment's settings go in [run-config]"
            )
    if flower is not None and "run-config" in raw:
        raise ExperimentError(
            f"{path} has both [run-config] and [tool.flwr.app.config]; keep one (they are read the same way)"
        )
    return dict(flower if flower is not None else raw.get("run-config", {}))


def _flower_num_supernodes(raw: Mapping[str, Any]) -> int | None:
    federations = raw.get("tool", {}).get("flwr", {}).get("federations", {})
    default = federations.get("default")
    table = federations.get(default, {}) if isinstance(default, str) else {}
    value = table.get("options", {}).get("num-supernodes")
    return int(value) if value is not None else None


def load_experiment(name_or_path: str) -> Experiment:
    """An experiment by name (a file in ``simulations/configs/``) or by path to a TOML file: an experiment file
    (``[run-config]``, ``[backend]``) or a Flower App's pyproject.toml (its ``[tool.flwr.app.config]``; its
    directory becomes the run's ``project-dir``). A section or key it does not know is an error naming it."""
    path = Path(name_or_path)
    if path.is_dir() and (path / "pyproject.toml").is_file():
        path = path / "pyproject.toml"
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
    project = _is_project_file(path, raw)
    if not project:
        _refuse_unknown(path, "section or key", list(raw), EXPERIMENT_KEYS)
        _refuse_unknown(path, "[backend] key", list(raw.get("backend", {})), BACKEND_KEYS)
    table = "[tool.flwr.app.config]" if project or "tool" in raw else "[run-config]"
    run_config = dict(DEFAULT_RUN_CONFIG)
    try:
        given = flatten_options(_run_config_table(path, raw))
        run_config.update({key: parse_setting(key, value) for key, value in given.items()})
    except RunConfigError as e:
        raise ExperimentError(f"{path}, {table}: {e}") from e
    if project and not run_config["project-dir"]:
        run_config["project-dir"] = str(path.resolve().parent)
    backend = dict(raw.get("backend", {})) if not project else {}
    num_supernodes = raw.get("num-supernodes", _flower_num_supernodes(raw) or 10)
    experiment = Experiment(
        name=path.resolve().parent.name if project else path.stem,
        description=str(raw.get("description", raw.get("project", {}).get("description", ""))),
        num_supernodes=int(num_supernodes),
        run_config=run_config,
        client_num_cpus=float(backend.pop("client-num-cpus", 1.0)),
        client_num_gpus=float(backend.pop("client-num-gpus", 0.0)),
        ray_address=str(backend.pop("ray-address", "")),
        source=path,
        extra_backend=backend,
    )
    return experiment


def apply_settings(experiment: Experiment, settings: Mapping[str, Any]) -> None:
    """Apply typed settings (``{"num-server-rounds": 3, "dp": False}``, a command's options) with the same checks
    as ``--set KEY=VALUE``; a value of ``None`` is an option that was not given and changes nothing."""
    for key, value in settings.items():
        if value is None:
            continue
        try:
            experiment.run_config[key] = parse_setting(key, value)
        except RunConfigError as e:
            raise ExperimentError(str(e)) from e


def apply_overrides(experiment: Experiment, settings: Sequence[str]) -> None:
    """Apply ``KEY=VALUE`` strings (``--set``), each parsed to the type of its key's default."""
    pairs = []
    for item in settings:
        if "=" not in item:
            raise ExperimentError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        key, value = key.strip(), value.strip()
        pairs.append((key, _scalar(value) if is_option_key(key) else value))
    for key, value in pairs:
        apply_settings(experiment, {key: value})


def _scalar(text: str) -> bool | int | float | str:
    """A ``--set model-options.NAME=VALUE`` string as the scalar it spells (true/false, an int, a float), else
    the string: options have no declared type to parse against."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def new_run_id(experiment: Experiment) -> str:
    """The experiment's run id: the one it sets, else a new one named after the experiment."""
    cfg = experiment.run_config
    if not cfg["run-id"]:
        cfg["run-id"] = mint_run_id(experiment.name)
    return str(cfg["run-id"])


def deployment_experiment(
    *,
    experiment: str | None = None,
    resume: str | Path | None = None,
    overrides: Sequence[str] = (),
    settings: Mapping[str, Any] | None = None,
) -> Experiment:
    """What ``fedge run`` submits to a federation: the experiment, its run config checked and complete.

    A new run: pyproject's defaults, then ``experiment`` (a name or a TOML file), then ``overrides`` (``--set``
    strings) and ``settings`` (typed options; ``None`` = not given); it gets a new run id unless one is set.

    A resumed run (``resume``, its run directory): the run's own saved config instead of an experiment (keys this
    version no longer knows are dropped), then the overrides; its run id, runs-dir and resume-from are then pinned
    to that directory whatever the overrides say, since the clients find their privacy accountants by the run id.

    ``data-path`` and ``runs-dir`` travel as given: they are paths on the server, which resolves them.
    """
    if resume is not None:
        run = RunDir(Path(resume).expanduser().resolve())
        if not run.config.is_file():
            raise ExperimentError(
                f"{run.path} is not a run directory (no config.json); "
                "give --resume the runs/<run-id>/ of the run to go on"
            )
        if not run.can_resume():
            raise ExperimentError(
                f"{run.path} has no saved server state (resume.pt): its first round never finished; start a new run"
            )
        saved = {k: v for k, v in run.read_config().items() if k in DEFAULT_RUN_CONFIG}
        chosen = Experiment(name=run.run_id, description="", num_supernodes=1, run_config=dict(DEFAULT_RUN_CONFIG))
        apply_settings(chosen, saved)
    elif experiment is not None:
        chosen = load_experiment(experiment)
    else:
        chosen = Experiment(name="run", description="", num_supernodes=1, run_config=dict(DEFAULT_RUN_CONFIG))
    apply_overrides(chosen, overrides)
    apply_settings(chosen, settings or {})
    if resume is not None:
        chosen.run_config.update({"resume-from": str(run.path), "run-id": run.run_id, "runs-dir": str(run.path.parent)})
    else:
        new_run_id(chosen)
    FederatedData.from_run_config(chosen.run_config)  # bad partitioner settings fail here, not on the server
    return chosen


def resolve_paths(experiment: Experiment) -> None:
    """Relative data and run paths are taken from the project root (where pyproject.toml lives) if they exist
    there, else from the current directory, and made absolute: the simulation's workers may run elsewhere."""
    cfg = experiment.run_config
    if cfg["project-dir"]:
        cfg["project-dir"] = str(Path(str(cfg["project-dir"])).expanduser().resolve())
    project = Path(str(cfg["project-dir"])) if cfg["project-dir"] else None
    for key in ("data-path", "runs-dir", "resume-from", "node-data-paths"):
        values = [v.strip() for v in str(cfg[key]).split(",")] if key == "node-data-paths" else [cfg[key]]
        resolved = []
        for value in values:
            if not value:
                continue
            candidate = Path(str(value)).expanduser()
            if not candidate.is_absolute():
                from_cwd = Path.cwd() / candidate
                from_root = (project or PROJECT_ROOT) / candidate
                candidate = from_cwd if (from_cwd.exists() or not from_root.exists()) else from_root
            resolved.append(str(candidate.resolve()))
        if resolved:
            cfg[key] = ",".join(resolved)


def validate(experiment: Experiment) -> list[str]:
    """Fail fast, with the fix in the message, on anything that would fail inside the simulation; the layers that
    will be replaced for DP-SGD (``dp-fix-model``), one line each."""
    cfg = experiment.run_config
    if experiment.num_supernodes < 1:
        raise ExperimentError(f"the number of clients must be at least 1, got {experiment.num_supernodes}")
    try:
        server = ServerConfig.from_run_config(cfg)  # every key present and typed, the strategy's options valid
    except ServerConfigError as e:
        raise ExperimentError(str(e)) from e
    options = server.strategy_options
    min_nodes = max(options.min_train_nodes, options.min_available_nodes)
    if min_nodes > experiment.num_supernodes:
        raise ExperimentError(
            f"the strategy waits for {min_nodes} nodes but only {experiment.num_supernodes} clients are simulated; "
            "lower min-train-nodes/min-available-nodes or simulate more clients"
        )
    data = server.data
    if data.partitioner == "natural":
        # Real nodes bring their own files (fedge node --data); a simulation of them names one file per node.
        paths = [p for p in str(cfg["node-data-paths"]).split(",") if p.strip()]
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
    add_to_path(cfg["project-dir"])
    model = server.model_config.build(test.input_shape, test.num_classes)
    where = data.loader.import_path
    check_data_fits(test, test.input_shape, where=where)
    replaced = server.model_config.replaced_layers(model)
    if server.dp:
        prepared = check_private(model, fix=bool(cfg["dp-fix-model"]), requested_mode=str(cfg["dp-mode"]))
        replaced += [
            line for line in prepared.replaced if not any(line.split(":")[0] == r.split(":")[0] for r in replaced)
        ]
    return replaced


def check_private(model: Any, *, fix: bool, requested_mode: str) -> Any:
    """What the clients will do to the model for DP-SGD, done once here on a copy: Opacus's validator names every
    layer it refuses before Flower starts; with the fix, the replaced layers are printed."""
    from client.privacy import prepare_model

    try:
        return prepare_model(copy.deepcopy(model), fix=fix, requested_mode=requested_mode)
    except FedgeError as e:
        raise ExperimentError(str(e)) from e


def export_project_path(project_dir: str) -> None:
    """Put the user's project on this process's path and on the one its workers (Ray actors) inherit."""
    if not project_dir:
        return
    add_to_path(project_dir)
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if project_dir not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([project_dir, *paths])

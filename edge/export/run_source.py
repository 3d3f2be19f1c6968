"""Read a trained model and its data back from a run directory (``runs/<run-id>/``, laid out by
:class:`shared_models.run_dir.RunDir`).

``model.json`` says which model (the factory's import path, its options, the user's project directory), input shape
and classes; ``model.pt`` holds its weights;
``config.json`` says how the data were split, so the server's held-out split is rebuilt exactly as in the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edge.agent.errors import FedgeError
from edge.compress.calibration import CalibrationSet
from edge.export.errors import CheckpointError
from edge.export.lineage import run_lineage
from edge.export.package import PackageInputs
from shared_models.data import ArrayDataset
from shared_models.federation import FederatedData
from shared_models.models import set_weights
from shared_models.registry import ModelConfig
from shared_models.run_config import DEFAULT_RUN_CONFIG
from shared_models.run_dir import RunDir, RunDirError


def load_run_model(run_dir: str | Path) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """(the final global model in eval mode, model.json, config.json) of a run."""
    run = RunDir(Path(run_dir))
    if not run.exists():
        raise CheckpointError(f"run directory {run.path} does not exist; pass a directory under runs/ (fedge simulate)")
    info_path, weights_path = run.model_info, run.model
    if not info_path.is_file():
        raise CheckpointError(f"{run.path} has no model.json; is it a fedge run directory (runs/<run-id>/)?")
    if not weights_path.is_file():
        raise CheckpointError(
            f"{run.path} has no model.pt (the final global model): the run did not finish; "
            "run it to the end (or resume it) before packaging"
        )
    try:
        info = run.read_model_info()
        config = run.read_config() if run.config.is_file() else {}
    except RunDirError as e:
        raise CheckpointError(str(e)) from e
    try:
        model = run_model_config(info, config).build(tuple(info["input-shape"]), int(info["num-classes"]))
    except KeyError as e:
        raise CheckpointError(f"{info_path} lacks {e}; expected model, input-shape and num-classes") from e
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises pickle, zip and runtime errors for a damaged file
        raise CheckpointError(f"cannot load {weights_path}: {e}; is the file complete?") from e
    try:
        set_weights(model, {k: v.numpy() if hasattr(v, "numpy") else np.asarray(v) for k, v in state.items()})
    except FedgeError as e:
        raise CheckpointError(f"{weights_path} does not fit the model in model.json: {e}") from e
    return model.eval(), info, config


def run_model_config(info: dict[str, Any], config: dict[str, Any]) -> ModelConfig:
    """How the run built its model, from model.json: the factory's import path (a built-in name in records older
    than the registry), its options, the user's project directory and whether BatchNorm was replaced for DP."""
    return ModelConfig(
        model=str(info.get("model-import-path") or info["model"]),
        options=tuple(sorted(dict(info.get("model-options") or {}).items())),
        project_dir=str(info.get("project-dir") or config.get("project-dir") or ""),
        fix_for_dp=bool(info.get("dp-fix-model", False)),
    )


def run_federated_data(info: dict[str, Any], config: dict[str, Any]) -> FederatedData:
    """The run's data description from its config.json. A record written before a key existed (or a run with no
    config.json) is read with model.json's data keys, then with the key's default."""
    data_keys = ("dataset", "data-path", "test-fraction", "seed")
    recorded = {key: info[key] for key in data_keys if key in info}
    return FederatedData.from_run_config({**DEFAULT_RUN_CONFIG, **recorded, **config})


def split_held_out(test: ArrayDataset, *, fraction: float = 0.5, seed: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
    """(tuning part, evaluation part) of the server's held-out split, disjoint, reproducible."""
    order = np.random.default_rng(seed).permutation(len(test))
    cut = int(round(len(test) * fraction))
    if not 0 < cut < len(test):
        raise CheckpointError(f"cannot divide {len(test)} held-out samples into a tuning and an evaluation part")
    return test.subset(np.sort(order[:cut])), test.subset(np.sort(order[cut:]))


def load_labelled_file(path: str | Path, *, num_classes: int) -> ArrayDataset:
    """Samples with labels from an ``.npz`` file holding ``x`` and ``y``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"data file {path} does not exist; pass an .npz file with arrays x and y")
    try:
        with np.load(path, allow_pickle=False) as npz:
            x, y = npz["x"].astype(np.float32), npz["y"].astype(np.int64)
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"cannot read {path} as an .npz file with arrays x and y: {e}") from e
    return ArrayDataset(path.stem, x, y, num_classes)


def run_package_inputs(
    run_dir: str | Path,
    *,
    tune_on: str = "held-out",
    calibration: str | Path | None = None,
    calibration_size: int = 256,
    seed: int = 0,
) -> PackageInputs:
    """What to package from a run: its final model, the data to fine-tune, distill and calibrate on, and the data
    to evaluate on. ``tune_on``: ``held-out`` (one half of the server's held-out split; the other half evaluates),
    ``pool`` (the clients' pooled training data; all held-out data evaluates) or an ``.npz`` file; ``calibration``:
    an ``.npz`` file of calibration samples instead of the tuning data."""
    model, info, config = load_run_model(run_dir)
    fed = run_federated_data(info, config)
    held_out = fed.server_test_set()
    if tune_on == "held-out":
        tune, test = split_held_out(held_out, fraction=0.5, seed=seed)
    elif tune_on == "pool":
        if fed.partitioner == "natural":
            raise CheckpointError("a run with the 'natural' partitioner has no pooled data; use --tune-on held-out")
        tune, test = fed.split()[0], held_out
    else:
        tune, test = load_labelled_file(tune_on, num_classes=held_out.num_classes), held_out
    input_shape = tuple(int(d) for d in info["input-shape"])
    if calibration is not None:
        calib = CalibrationSet.from_file(calibration, input_shape=input_shape, limit=calibration_size, seed=seed)
    else:
        calib = CalibrationSet.from_dataset(tune, input_shape=input_shape, limit=calibration_size, seed=seed)
    return PackageInputs(
        model=model,
        model_name=str(info.get("model-import-path") or info["model"]),
        input_shape=input_shape,
        num_classes=int(info["num-classes"]),
        test=test,
        tune=tune,
        calibration=calib,
        source={
            "run-id": RunDir(Path(run_dir)).run_id,
            "run-dir": str(run_dir),
            "tune-on": str(tune_on),
            "test-samples": len(test),
            "tune-samples": len(tune),
            "model-options": dict(info.get("model-options") or {}),
            "project-dir": str(info.get("project-dir") or ""),
            **({"device-preprocessing": info["device-preprocessing"]} if info.get("device-preprocessing") else {}),
            "lineage": run_lineage(run_dir),
        },
    )

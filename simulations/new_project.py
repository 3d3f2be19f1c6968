"""``fedge new``: write a user's project, a Flower App whose model and data are the user's own.

The project holds ``pyproject.toml`` (fedge's ServerApp and ClientApp as ``[tool.flwr.app.components]``, every run
setting in ``[tool.flwr.app.config]`` with ``model``/``dataset`` naming the project's functions by import path, a
local federation's node count), a package with ``task.py`` (the model factory and the data loader: one of the
templates in ``simulations/templates/``), the data the template trains on (generated here from data that ships with
scikit-learn, or synthetic), and a README. Inside it, ``fedge simulate``, ``flwr run .``, ``fedge run``,
``fedge package`` and ``fedge publish`` work on the user's model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from server.flower_app import CLIENT_APP, SERVER_APP, toml_value
from shared_models.errors import FedgeError
from shared_models.run_config import DEFAULT_RUN_CONFIG

TEMPLATE_DIR = Path(__file__).parent / "templates"


class NewProjectError(FedgeError):
    """A project that cannot be written (unknown template, a directory that is not empty, a bad name)."""


@dataclass(frozen=True)
class Template:
    name: str
    description: str
    settings: dict[str, Any]
    model_options: dict[str, Any]
    data_options: dict[str, Any]
    write_data: Callable[[Path], None]
    num_supernodes: int = 3


@dataclass(frozen=True)
class Project:
    directory: Path
    package: str
    template: str


def _write_digit_images(data: Path) -> None:
    """scikit-learn's 8x8 digits as grayscale PNG files, data/<digit>/<index>.png (0..255)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for index, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        folder = data / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.round(image * (255.0 / 16.0)).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / f"{index:04d}.png")


def _write_table(data: Path) -> None:
    """scikit-learn's breast cancer table as data/table.csv (a header, 30 features, ``label``) and the features'
    mean and standard deviation (data/feature-stats.json) that training and the device both use."""
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    data.mkdir(parents=True, exist_ok=True)
    names = [re.sub(r"[^a-z0-9]+", "_", n.lower()).strip("_") for n in bunch.feature_names]
    lines = [",".join([*names, "label"])]
    lines += [
        ",".join([*(f"{v:.6g}" for v in row), str(int(y))]) for row, y in zip(bunch.data, bunch.target, strict=True)
    ]
    (data / "table.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    x = np.asarray([[float(v) for v in line.split(",")[:-1]] for line in lines[1:]])
    stats = {"mean": x.mean(axis=0).round(6).tolist(), "std": np.maximum(x.std(axis=0), 1e-6).round(6).tolist()}
    (data / "feature-stats.json").write_text(json.dumps(stats, indent=1) + "\n", encoding="utf-8")


def _write_sensors(data: Path, *, windows: int = 960, steps: int = 32, seed: int = 0) -> None:
    """A synthetic 3-axis motion sensor: four activities (rest, walk, run, shake) as windows (N, 3, steps)."""
    rng = np.random.default_rng(seed)
    t = np.arange(steps) / 10.0  # 10 Hz
    x = np.empty((windows, 3, steps), dtype=np.float32)
    y = np.arange(windows) % 4
    frequency = {0: 0.0, 1: 1.0, 2: 2.5, 3: 4.5}
    amplitude = {0: 0.05, 1: 0.6, 2: 1.2, 3: 0.8}
    for i, label in enumerate(y):
        phase = rng.uniform(0, 2 * np.pi, size=3)
        wave = amplitude[label] * np.sin(2 * np.pi * frequency[label] * t[None, :] + phase[:, None])
        tilt = np.array([[0.0], [0.3 * label], [1.0]])  # gravity on z; each activity holds the watch its own way
        x[i] = wave + rng.normal(scale=0.15, size=(3, steps)) + tilt
    data.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(data / "sensors.npz", x=x, y=y.astype(np.int64))


TEMPLATES = {
    t.name: t
    for t in (
        Template(
            "image",
            "a small CNN on images in one folder per class (scikit-learn's 8x8 digits as PNG files)",
            {"data-path": "data", "num-server-rounds": 3, "local-epochs": 2, "batch-size": 32, "learning-rate": 0.5},
            {"channels": 8},
            {"size": 8},
            _write_digit_images,
        ),
        Template(
            "tabular",
            "an MLP on a CSV table (scikit-learn's breast cancer data), standardized on the device too",
            {
                "data-path": "data/table.csv",
                "num-server-rounds": 3,
                "local-epochs": 2,
                "batch-size": 32,
                "learning-rate": 0.2,
            },
            {"hidden": 32},
            {"label-column": "label"},
            _write_table,
        ),
        Template(
            "timeseries",
            "a 1-D CNN on windows of a 3-axis motion sensor (synthetic: rest, walk, run, shake)",
            {
                "data-path": "data/sensors.npz",
                "num-server-rounds": 3,
                "local-epochs": 2,
                "batch-size": 32,
                "learning-rate": 1.0,
            },
            {"channels": 16},
            {},
            _write_sensors,
        ),
    )
}


def package_name(directory: Path) -> str:
    """The Python package a project directory's name gives: ``my-sensors`` -> ``my_sensors``."""
    name = re.sub(r"[^0-9a-zA-Z_]+", "_", directory.resolve().name).strip("_").lower()
    if not name:
        raise NewProjectError(
            f"cannot make a Python package name from {directory.name!r}; name the directory in letters"
        )
    return f"p_{name}" if name[0].isdigit() else name


def pyproject_text(project: str, package: str, template: Template) -> str:
    """The project's pyproject.toml: a Flower App naming fedge's apps, with every run setting listed (``flwr run .``
    passes exactly this table; fedge's defaults fill nothing in there)."""
    settings = {
        "model": f"{package}.task:build_model",
        "dataset": f"{package}.task:load_data",
        **template.settings,
        "min-train-nodes": 2,
        "min-available-nodes": 2,
    }
    rest = {k: v for k, v in DEFAULT_RUN_CONFIG.items() if k not in settings}
    lines = [
        "# A fedge project: fedge trains this package's model (task.py: build_model, load_data) with federated",
        "# learning and differential privacy, then packages it for devices. See README.md.",
        "[build-system]",
        'requires = ["setuptools>=77"]',
        'build-backend = "setuptools.build_meta"',
        "",
        "[project]",
        f"name = {json.dumps(project)}",
        'version = "0.1.0"',
        f"description = {json.dumps(f'fedge project: {template.description}')}",
        'requires-python = ">=3.11,<3.12"',
        'dependencies = ["fedge[train]"]',
        "",
        "[tool.setuptools.packages.find]",
        f'include = ["{package}*"]',
        "",
        "[tool.flwr.app]",
        f"publisher = {json.dumps(project)}",
        "",
        "[tool.flwr.app.components]",
        f"serverapp = {json.dumps(SERVER_APP)}",
        f"clientapp = {json.dumps(CLIENT_APP)}",
        "",
        "# The run settings (kebab-case). model and dataset name this project's functions by import path.",
        "[tool.flwr.app.config]",
        *(f"{key} = {toml_value(value)}" for key, value in settings.items()),
        "# fedge's defaults, listed so that `flwr run .` has every setting",
        *(f"{key} = {toml_value(value)}" for key, value in rest.items()),
        "",
        "# Keyword arguments of build_model (model-options.NAME) and load_data (data-options.NAME).",
        "[tool.flwr.app.config.model-options]",
        *(f"{key} = {toml_value(value)}" for key, value in template.model_options.items()),
        "",
        "[tool.flwr.app.config.data-options]",
        *(f"{key} = {toml_value(value)}" for key, value in template.data_options.items()),
        "",
        "# `fedge simulate` and `flwr run .` simulate this many nodes.",
        "[tool.flwr.federations]",
        'default = "local-simulation"',
        "",
        "[tool.flwr.federations.local-simulation]",
        f"options.num-supernodes = {template.num_supernodes}",
    ]
    return "\n".join(lines) + "\n"


README = """# {name}

A fedge project ({template} template): {description}.

- `{package}/task.py`: your model (`build_model(input_shape, num_classes, **options)`) and data loader
  (`load_data(data_path, **options)` -> `(x, y)`), named in `pyproject.toml` as `model = "{package}.task:build_model"`
  and `dataset = "{package}.task:load_data"`. Options: `[tool.flwr.app.config.model-options]` and `data-options`.
- `data/`: the data it trains on (generated by `fedge new`); replace it with yours, in the same layout.
- `pyproject.toml`: a Flower App running fedge's ServerApp and ClientApp, with every run setting.

From this directory:

```bash
fedge simulate                      # {nodes} simulated nodes, DP-SGD on each, run record under runs/<run-id>/
flwr run .                          # the same job through Flower's own command
fedge package runs/<run-id>         # prune, quantize (int8), distil; ONNX and TFLite, each verified
fedge agent ...  /  fedge publish   # deliver an artifact to devices (see fedge's README)
fedge run --config pyproject.toml   # real nodes: fedge server + fedge node (this directory is the Flower App)
```

Errors in `task.py` (an import that fails, a wrong signature, an output size that is not the number of classes,
samples of the wrong shape) are reported before the first round, naming the function and what to change.
A model with BatchNorm or an nn.LSTM/GRU trains with DP once `dp-fix-model = true` (`fedge simulate --fix-model`).
"""


def create_project(directory: str | Path, *, template: str = "image", force: bool = False) -> Project:
    """Write a runnable project into ``directory`` from ``template`` (image, tabular or timeseries)."""
    if template not in TEMPLATES:
        raise NewProjectError(f"unknown template {template!r}; choose one of: {', '.join(TEMPLATES)}")
    chosen = TEMPLATES[template]
    root = Path(directory).expanduser()
    if root.exists() and not root.is_dir():
        raise NewProjectError(f"{root} is a file; give a directory for the new project")
    if root.is_dir() and any(root.iterdir()) and not force:
        raise NewProjectError(f"{root} is not empty; choose a new directory (or pass --force to write into it)")
    package = package_name(root)
    project = re.sub(r"[^0-9a-zA-Z]+", "-", root.resolve().name).strip("-").lower() or package
    (root / package).mkdir(parents=True, exist_ok=True)
    (root / package / "__init__.py").write_text(f'"""{project}: a fedge project."""\n', encoding="utf-8")
    task = (TEMPLATE_DIR / template / "task.py").read_text(encoding="utf-8")
    (root / package / "task.py").write_text(
        task.replace("{{name}}", project).replace("{{package}}", package), encoding="utf-8"
    )
    (root / "pyproject.toml").write_text(pyproject_text(project, package, chosen), encoding="utf-8")
    (root / "README.md").write_text(
        README.format(
            name=project,
            template=template,
            description=chosen.description,
            package=package,
            nodes=chosen.num_supernodes,
        ),
        encoding="utf-8",
    )
    chosen.write_data(root / "data")
    return Project(root, package, template)

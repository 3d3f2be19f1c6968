"""fedge new writes a runnable project; experiment files refuse what they do not know; a user's mistakes in task.py
are one-line errors with exit code 2 before anything starts."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from simulations.experiment import (
    ExperimentError,
    load_experiment,
    new_run_id,
    project_experiment_file,
    resolve_paths,
    validate,
)
from simulations.new_project import NewProjectError, create_project

ROOT = Path(__file__).resolve().parents[2]


def _fedge(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "simulations.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.mark.parametrize("template", ["image", "tabular", "timeseries"])
def test_new_project_is_a_flower_app_whose_experiment_validates(tmp_path: Path, template: str):
    project = create_project(tmp_path / f"my-{template}", template=template)
    pyproject = tomllib.loads((project.directory / "pyproject.toml").read_text())
    components = pyproject["tool"]["flwr"]["app"]["components"]
    assert components == {"serverapp": "server.server_app:app", "clientapp": "client.client_app:app"}
    config = pyproject["tool"]["flwr"]["app"]["config"]
    assert config["model"] == f"my_{template}.task:build_model"
    assert config["dataset"] == f"my_{template}.task:load_data"
    assert (project.directory / project.package / "task.py").is_file()
    assert project_experiment_file(project.directory) == project.directory / "pyproject.toml"
    experiment = load_experiment(str(project.directory / "pyproject.toml"))
    assert experiment.run_config["project-dir"] == str(project.directory.resolve())
    assert (
        experiment.num_supernodes
        == pyproject["tool"]["flwr"]["federations"]["local-simulation"]["options"]["num-supernodes"]
    )
    resolve_paths(experiment)
    new_run_id(experiment)
    validate(experiment)  # the factory, the loader, the shapes and Opacus's validator, before any round


def test_new_refuses_a_directory_with_files_and_an_unknown_template(tmp_path: Path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(NewProjectError, match="not empty"):
        create_project(tmp_path / "taken")
    with pytest.raises(NewProjectError, match="unknown template 'audio'"):
        create_project(tmp_path / "new", template="audio")


def test_unknown_section_and_key_are_named_with_the_closest(tmp_path: Path):
    bad_section = tmp_path / "a.toml"
    bad_section.write_text('num-supernodes = 2\n[run-confg]\nmodel = "digits-cnn"\n')
    with pytest.raises(ExperimentError, match="unknown section or key 'run-confg'; did you mean 'run-config'"):
        load_experiment(str(bad_section))
    bad_key = tmp_path / "b.toml"
    bad_key.write_text("[run-config]\nnum-server-round = 2\n")
    with pytest.raises(ExperimentError, match="did you mean 'num-server-rounds'"):
        load_experiment(str(bad_key))
    bad_backend = tmp_path / "c.toml"
    bad_backend.write_text("[backend]\nclient-num-cpu = 2\n")
    with pytest.raises(ExperimentError, match="did you mean 'client-num-cpus'"):
        load_experiment(str(bad_backend))


def test_a_flower_config_table_in_an_experiment_file_is_read_as_run_config(tmp_path: Path):
    path = tmp_path / "flower-style.toml"
    path.write_text(
        'num-supernodes = 3\n[tool.flwr.app.config]\ndataset = "breast-cancer"\nmodel = "tabular-mlp"\n'
        "num-server-rounds = 2\n[tool.flwr.app.config.model-options]\nwidth = 0.5\n"
    )
    experiment = load_experiment(str(path))
    assert experiment.run_config["dataset"] == "breast-cancer"
    assert experiment.run_config["num-server-rounds"] == 2
    assert experiment.run_config["model-options.width"] == 0.5
    both = tmp_path / "both.toml"
    both.write_text('[run-config]\ndp = false\n[tool.flwr.app.config]\nmodel = "tabular-mlp"\n')
    with pytest.raises(ExperimentError, match="both"):
        load_experiment(str(both))


BAD_TASKS = {
    "unimportable": ("import no_such_dependency_xyz\n", "cannot import module 'badproj.task'"),
    "signature": (
        "def build_model(shape):\n    return None\n",
        r"badproj.task:build_model has the signature .*build_model\(input_shape",
    ),
    "output": (
        "from torch import nn\n\ndef build_model(input_shape, num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))\n",
        r"outputs shape \(3,\).*10 classes",
    ),
    "loader": (
        "import numpy as np\nfrom shared_models.models import digits_cnn as build_model\n\n"
        "def load_data(data_path):\n    return np.zeros((20, 1, 8, 8), dtype=np.float32), np.zeros(19, dtype=int)\n",
        "returned 20 samples .* but 19 labels",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_TASKS))
def test_users_mistakes_are_one_line_errors_with_exit_code_2(tmp_path: Path, case: str):
    source, message = BAD_TASKS[case]
    project = tmp_path / "badproj"
    (project / "badproj").mkdir(parents=True)
    (project / "badproj" / "__init__.py").write_text("")
    (project / "badproj" / "task.py").write_text(source)
    dataset = "badproj.task:load_data" if case == "loader" else "digits"
    (project / "pyproject.toml").write_text(
        '[project]\nname = "badproj"\n[tool.flwr.app.config]\nmodel = "badproj.task:build_model"\n'
        f'dataset = "{dataset}"\nnum-server-rounds = 1\n'
    )
    result = _fedge("simulate", "-n", "2", cwd=project)
    assert result.returncode == 2, result.stderr + result.stdout
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    assert re.search(message, " ".join(output.split())), output


def test_unknown_config_key_on_the_command_line_is_exit_code_2(tmp_path: Path):
    result = _fedge("simulate", "--set", "target-epsilom=2", cwd=ROOT)
    assert result.returncode == 2
    assert "did you mean 'target-epsilon'" in " ".join((result.stdout + result.stderr).split())


def test_batchnorm_model_refused_before_the_run_then_fixed_naming_the_layers(tmp_path: Path):
    package = tmp_path / "bnproj"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "task.py").write_text(
        "from torch import nn\n\ndef build_model(input_shape, num_classes):\n"
        "    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),\n"
        "                         nn.Linear(8 * 64, num_classes))\n"
    )
    path = tmp_path / "bn.toml"
    path.write_text(
        f'num-supernodes = 2\n[run-config]\nmodel = "bnproj.task:build_model"\nproject-dir = "{tmp_path}"\n'
    )
    experiment = load_experiment(str(path))
    resolve_paths(experiment)
    new_run_id(experiment)
    with pytest.raises(ExperimentError, match=r"1 \(BatchNorm2d.*dp-fix-model = true"):
        validate(experiment)
    experiment.run_config["dp-fix-model"] = True
    assert validate(experiment) == ["1: BatchNorm2d(8) -> GroupNorm(8 groups, 8 channels)"]

"""The worked examples and the `fedge new` templates are Flower Apps whose table `flwr run .` passes as it is: every
run setting fedge's apps read must be in it (they fill in nothing), and it must parse as the server's config."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from flwr.common.config import flatten_dict

from server.config import ServerConfig
from shared_models.run_config import DEFAULT_RUN_CONFIG
from simulations.new_project import create_project

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p.parent for p in (ROOT / "simulations" / "examples").glob("*/pyproject.toml"))


def _flower_run_config(pyproject: Path) -> dict:
    """What Flower hands the apps: the [tool.flwr.app.config] table, nested tables flattened to dotted keys."""
    return flatten_dict(tomllib.loads(pyproject.read_text())["tool"]["flwr"]["app"]["config"])


def _check(pyproject: Path) -> None:
    config = _flower_run_config(pyproject)
    missing = sorted(k for k in DEFAULT_RUN_CONFIG if "." not in k and k not in config)
    assert not missing, f"{pyproject}: flwr run . would fail on the missing settings {missing}"
    ServerConfig.from_run_config(config)


def test_there_are_examples():
    assert {p.name for p in EXAMPLES} >= {"iot-sensors", "hospitals"}


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_lists_every_setting_flwr_run_passes(example: Path):
    _check(example / "pyproject.toml")


@pytest.mark.parametrize("template", ["image", "tabular", "timeseries"])
def test_new_project_lists_every_setting_flwr_run_passes(tmp_path: Path, template: str):
    project = create_project(tmp_path / f"my-{template}", template=template)
    _check(Path(project.directory) / "pyproject.toml")

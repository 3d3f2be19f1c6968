import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from simulations.experiment import DEFAULT_RUN_CONFIG, ExperimentError, available_experiments, load_experiment

ROOT = Path(__file__).resolve().parents[2]


def _fedge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "simulations.cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=120
    )


def test_pyproject_defaults_match_the_simulators():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["tool"]["flwr"]["app"]["config"] == DEFAULT_RUN_CONFIG
    components = pyproject["tool"]["flwr"]["app"]["components"]
    assert components == {"serverapp": "server.server_app:app", "clientapp": "client.client_app:app"}


def test_every_shipped_experiment_loads():
    assert {"digits-dp", "mnist-dirichlet"} <= set(available_experiments())
    for name in available_experiments():
        assert load_experiment(name).num_supernodes >= 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["simulate", "--strategy", "fedsgd"], "unknown strategy 'fedsgd'"),
        (["simulate", "--set", "model=resnet"], "unknown model 'resnet'"),
        (["simulate", "--set", "partitioner=dirichlet", "--set", "alpha=0"], "alpha must be > 0"),
        (["simulate", "--config", "mnist-dirichlet", "--data-path", "/no/such/dir"], "does not exist"),
        (
            ["simulate", "--set", "dataset=csv", "--set", "model=tabular-mlp", "--data-path", "tests/data/README.md"],
            "no label column 'label'",
        ),
        (["simulate", "--config", "nonesuch"], "no experiment named 'nonesuch'"),
        (["simulate", "--set", "rounds=3"], "unknown setting 'rounds'"),
        (["simulate", "-n", "1"], "only 1 clients"),
    ],
)
def test_bad_input_is_one_clear_line_without_traceback(args, message):
    result = _fedge(*args)
    assert result.returncode == 2, result.stderr
    output = " ".join((result.stdout + result.stderr).split())
    assert message in output
    assert "Traceback" not in output


def test_help_explains_every_command():
    for args in (["--help"], ["simulate", "--help"], ["experiments", "--help"]):
        result = _fedge(*args)
        assert result.returncode == 0
        assert "Usage" in result.stdout
    assert "--num-clients" in _fedge("simulate", "--help").stdout


def test_override_types_are_checked():
    exp = load_experiment("digits-dp")
    with pytest.raises(ExperimentError, match="expected an int"):
        from simulations.experiment import apply_overrides

        apply_overrides(exp, ["num-server-rounds=many"])


def test_a_path_that_cannot_be_written_is_one_line_not_a_traceback(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = _fedge("certs", "--out", str(blocker / "certs"))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "error:" in result.stderr and "a-file" in result.stderr


def test_demo_from_a_folder_that_is_not_a_run_is_refused_and_nothing_is_deleted(tmp_path):
    from simulations.demo import DemoError, DemoOptions, run_demo

    precious = tmp_path / "edge" / "agent.py"
    precious.parent.mkdir()
    precious.write_text("source code")
    with pytest.raises(DemoError, match="not a finished fedge run"):
        run_demo(DemoOptions(from_run=tmp_path))
    assert precious.read_text() == "source code"


# A fresh interpreter in which the training stack and the exporters are not installed (what a device has after
# `pip install "fedge[agent]"`): importing any of them fails as it would there.
_WITHOUT_TRAINING = """
import importlib.abc, sys
BANNED = {"torch", "flwr", "opacus", "sklearn", "matplotlib", "ray", "onnx", "onnxscript", "litert_torch"}
class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BANNED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NotInstalled())
sys.argv = ["fedge", *sys.argv[1:]]
from simulations.cli import main
main()
"""


def _fedge_without_training(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT_TRAINING, *args], capture_output=True, text=True, cwd=ROOT, timeout=120
    )


def test_device_and_delivery_commands_run_without_the_training_extra(tmp_path):
    assert "--device-id" in _fedge_without_training("agent", "--help").stdout
    assert "--canary" in _fedge_without_training("publish", "--help").stdout
    keygen = _fedge_without_training("keygen", str(tmp_path / "server"))
    assert keygen.returncode == 0, keygen.stderr
    assert (tmp_path / "server.key").exists() and (tmp_path / "server.pub").exists()


def test_a_command_that_needs_a_missing_extra_says_which_one():
    result = _fedge_without_training("simulate", "--rounds", "1")
    assert result.returncode == 2
    message = " ".join(result.stderr.split())  # rich wraps long lines
    assert "comes with the 'train' extra: pip install \"fedge[train]\"" in message, result.stderr
    assert "Traceback" not in result.stderr


def _commands(group, prefix=()):
    import click

    for name, command in group.commands.items():
        yield (*prefix, name), command
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))


def test_help_keeps_every_bracket_it_was_written_with():
    """Help is rendered with rich markup, which takes "[word]" for a style tag: a bracket meant literally
    ("fedge[agent]", "mqtt://[user@]host") is written escaped, and must then show as written."""
    import re

    import typer
    from typer.testing import CliRunner

    from simulations.cli import app

    root = typer.main.get_command(app)
    runner = CliRunner()
    checked = 0
    for path, command in _commands(root):
        shown = " ".join(runner.invoke(app, [*path, "--help"], env={"COLUMNS": "2000"}).output.split())
        texts = [command.help or ""] + [getattr(p, "help", None) or "" for p in command.params]
        for text in texts:
            text = " ".join(text.split())
            for token in re.findall(r"\[[a-z#/@][^\]\s]*\]", text):
                start = text.index(token)
                assert start > 0 and text[start - 1] == "\\", (
                    f"fedge {' '.join(path)}: {token!r} in its help is read as rich markup; write it as \\{token}"
                )
            for token in re.findall(r"\\(\[[^\]\s]+\])", text):
                assert token in shown, f"fedge {' '.join(path)} --help lost {token!r}"
                checked += 1
    assert checked >= 2  # fedge[agent] and mqtt://[user@]host are in today's help texts

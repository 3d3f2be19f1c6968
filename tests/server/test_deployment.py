"""server/deployment.py without a SuperLink: paths, Flower's programs, what fedge run checks before it submits."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from server.credentials import make_test_certificates
from server.deployment import (
    RUN_RECORD_LINE,
    Connection,
    DeploymentError,
    SuperLinkSettings,
    _json_reply,
    check_server_data,
    flower_env,
)
from server.flower_app import write_app_dir


def test_flowers_own_children_come_from_this_environment_first(monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # a venv's fedge started by its path, the venv not activated
    path = flower_env()["PATH"].split(os.pathsep)
    assert path[0] == str(Path(sys.executable).parent) and path[1:] == ["/usr/bin", "/bin"]
    assert flower_env()["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"


def test_superlink_gets_absolute_paths_and_works_where_fedge_server_started(tmp_path, monkeypatch):
    make_test_certificates(tmp_path / "certs")
    monkeypatch.chdir(tmp_path)
    settings = SuperLinkSettings(
        state_dir=Path("fedge-server"),
        ca_certificate=Path("certs/ca.crt"),
        server_certificate=Path("certs/server.pem"),
        server_key=Path("certs/server.key"),
    )
    command = settings.command()
    for flag in ("--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile", "--database"):
        value = Path(command[command.index(flag) + 1])
        assert value.is_absolute() and value.is_relative_to(tmp_path), (flag, value)
    assert settings.work_dir == tmp_path  # relative data-path / runs-dir of a run are taken from here


def test_a_missing_server_table_is_named_before_anything_starts():
    with pytest.raises(DeploymentError, match=r"--set data-path=PATH") as caught:
        check_server_data(
            {"dataset": "csv", "data-path": ""}, experiment="heart-disease", description="evaluates on table.csv"
        )
    assert "heart-disease" in str(caught.value) and "table.csv" in str(caught.value)
    check_server_data({"dataset": "csv", "data-path": "relative/on/the/server.csv"})  # travels as given
    check_server_data({"dataset": "digits", "data-path": ""})  # ships with scikit-learn


def test_tls_without_a_ca_is_refused_and_a_relative_ca_made_absolute(tmp_path, monkeypatch):
    with pytest.raises(DeploymentError, match="CA certificate"):
        Connection(superlink="127.0.0.1:9092")
    monkeypatch.chdir(tmp_path)
    Path("ca.crt").write_text("x")
    assert Connection(superlink="h:1", ca_certificate=Path("ca.crt")).ca_certificate == tmp_path / "ca.crt"


def test_run_record_path_is_read_from_the_server_apps_last_line():
    line = "done: accuracy 0.455 -> 0.802, max ε 7.9 (budget 8); run record in /srv/runs/hd-1 (x)\n"
    assert RUN_RECORD_LINE.search(line).group(1) == "/srv/runs/hd-1 (x)"


def test_flowers_json_error_becomes_one_clear_message():
    reply = subprocess.CompletedProcess([], 1, '{"success": false, "error-message": "Connection refused"}', "")
    with pytest.raises(DeploymentError, match="submitting the run .flwr run. failed: Connection refused"):
        _json_reply(reply, "submitting the run (flwr run)")


def test_the_app_fedge_submits_is_a_flower_app_flower_accepts(tmp_path):
    from flwr.cli.build import build_fab_from_disk
    from flwr.cli.config_utils import load_and_validate

    app = write_app_dir(tmp_path / "app", {"num-server-rounds": 2, "dp": True, "data-path": "t.csv", "alpha": 0.5})
    config, _ = load_and_validate(app / "pyproject.toml")  # checks the components import from the installed fedge
    assert config["tool"]["flwr"]["app"]["components"]["serverapp"] == "server.server_app:app"
    assert config["tool"]["flwr"]["app"]["config"]["data-path"] == "t.csv"
    assert build_fab_from_disk(app)  # what flwr run builds and submits

"""Experiments: typed settings checked like --set strings, run ids from one function, fedge run's resume semantics."""

from __future__ import annotations

import re

import pytest

from shared_models.run_config import DEFAULT_RUN_CONFIG
from shared_models.run_dir import RunDir, write_json
from simulations.experiment import (
    ExperimentError,
    apply_overrides,
    apply_settings,
    deployment_experiment,
    load_experiment,
    new_run_id,
)


def test_typed_settings_and_set_strings_give_the_same_run_config():
    typed, strings = load_experiment("digits-dp"), load_experiment("digits-dp")
    apply_settings(typed, {"num-server-rounds": 3, "dp": False, "target-epsilon": 2, "strategy": None})
    apply_overrides(strings, ["num-server-rounds=3", "dp=false", "target-epsilon=2"])
    assert typed.run_config == strings.run_config
    assert (typed.run_config["num-server-rounds"], typed.run_config["dp"]) == (3, False)
    assert typed.run_config["strategy"] == DEFAULT_RUN_CONFIG["strategy"]  # None: an option not given


@pytest.mark.parametrize("settings", [{"num-server-rounds": "many"}, {"num-server-rounds": 2.5}, {"dp": 1}])
def test_typed_settings_are_refused_like_strings(settings):
    with pytest.raises(ExperimentError, match=f"{next(iter(settings))}=.*expected"):
        apply_settings(load_experiment("digits-dp"), settings)


def test_an_unknown_set_key_suggests_the_right_one():
    with pytest.raises(ExperimentError, match="unknown setting 'learning-rat'; did you mean 'learning-rate'"):
        apply_overrides(load_experiment("digits-dp"), ["learning-rat=0.1"])
    with pytest.raises(ExperimentError, match="did you mean 'num-server-rounds'"):
        apply_settings(load_experiment("digits-dp"), {"num_server_rounds": 3})


def test_an_unknown_key_in_an_experiment_file_suggests_the_right_one(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text("num-supernodes = 2\n[run-config]\nlocal-epoch = 1\n")
    with pytest.raises(ExperimentError, match=r"mine\.toml, \[run-config\].*did you mean 'local-epochs'"):
        load_experiment(str(path))


def test_a_new_run_gets_an_id_from_the_one_minting_function():
    experiment = load_experiment("digits-dp")
    run_id = new_run_id(experiment)
    assert re.fullmatch(r"digits-dp-\d{8}-\d{6}-[0-9a-f]{6}", run_id)
    assert new_run_id(experiment) == run_id == experiment.run_config["run-id"]  # set once, then kept
    assert re.fullmatch(r"run-\d{8}-\d{6}-[0-9a-f]{6}", deployment_experiment().run_config["run-id"])


def _saved_run(tmp_path, **config):
    run = RunDir.of(tmp_path / "runs", "digits-dp-20250101-000000-abcdef")
    write_json(run.config, {**DEFAULT_RUN_CONFIG, "run-id": "", "old-key-from-an-earlier-version": 1, **config})
    run.resume.write_bytes(b"saved state")
    return run


def test_resume_takes_the_runs_own_settings_and_keeps_its_id_and_directory(tmp_path):
    run = _saved_run(tmp_path, **{"num-server-rounds": 4, "learning-rate": 0.2, "strategy": "fedprox"})
    cfg = deployment_experiment(
        resume=run.path, overrides=["run-id=other", "learning-rate=0.3"], settings={"num-server-rounds": 6}
    ).run_config
    assert (cfg["strategy"], cfg["learning-rate"], cfg["num-server-rounds"]) == ("fedprox", 0.3, 6)
    assert cfg["run-id"] == run.run_id and cfg["resume-from"] == str(run.path.resolve())
    assert cfg["runs-dir"] == str(run.path.resolve().parent)
    assert "old-key-from-an-earlier-version" not in cfg


def test_resume_refuses_a_folder_that_is_not_a_resumable_run(tmp_path):
    with pytest.raises(ExperimentError, match="not a run directory"):
        deployment_experiment(resume=tmp_path)
    run = _saved_run(tmp_path)
    run.resume.unlink()
    with pytest.raises(ExperimentError, match="first round never finished"):
        deployment_experiment(resume=run.path)

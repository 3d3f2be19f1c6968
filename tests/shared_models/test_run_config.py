"""The run config's one mirror of pyproject's defaults: key checks, typed values, missing keys, run ids."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared_models.run_config import DEFAULT_RUN_CONFIG, RunConfigError, mint_run_id, parse_setting, setting


def test_the_defaults_cannot_be_changed_in_place():
    with pytest.raises(TypeError):
        DEFAULT_RUN_CONFIG["num-server-rounds"] = 1  # type: ignore[index]


@pytest.mark.parametrize(
    "typo, meant",
    [
        ("num-server-round", "num-server-rounds"),
        ("learning_rate", "learning-rate"),
        ("target-epsylon", "target-epsilon"),
    ],
)
def test_an_unknown_key_suggests_the_closest_known_one(typo, meant):
    with pytest.raises(RunConfigError, match=f"unknown setting '{typo}'; did you mean '{meant}'"):
        parse_setting(typo, "1")


def test_an_unknown_key_far_from_any_suggests_nothing():
    with pytest.raises(RunConfigError, match="unknown setting 'zzz'; known settings") as caught:
        parse_setting("zzz", "1")
    assert "did you mean" not in str(caught.value)


@pytest.mark.parametrize(
    "key, text, typed, expected",
    [
        ("num-server-rounds", "3", 3, 3),
        ("dp", "false", False, False),
        ("dp", "yes", True, True),
        ("target-epsilon", "2", 2, 2.0),
        ("strategy", "fedprox", "fedprox", "fedprox"),
    ],
)
def test_typed_values_and_strings_give_the_same_setting(key, text, typed, expected):
    assert parse_setting(key, text) == parse_setting(key, typed) == expected
    assert type(parse_setting(key, text)) is type(parse_setting(key, typed)) is type(DEFAULT_RUN_CONFIG[key])


@pytest.mark.parametrize(
    "key, text, typed",
    [
        ("num-server-rounds", "many", 2.5),
        ("num-server-rounds", "3.0", True),
        ("dp", "maybe", 1),
        ("target-epsilon", "much", "x"),
        ("strategy", None, 3),
    ],
)
def test_typed_values_are_refused_like_strings(key, text, typed):
    kind = type(DEFAULT_RUN_CONFIG[key]).__name__
    if text is not None:
        with pytest.raises(RunConfigError, match=rf"{key}=.*expected an? {kind}"):
            parse_setting(key, text)
    with pytest.raises(RunConfigError, match=rf"{key}=.*expected an? {kind if kind != 'str' else 'string'}"):
        parse_setting(key, typed)


def test_a_path_is_taken_for_a_string_setting():
    assert parse_setting("runs-dir", Path("/tmp/runs")) == "/tmp/runs"


def test_a_missing_key_names_itself_and_where_to_set_it():
    config = {k: v for k, v in DEFAULT_RUN_CONFIG.items() if k != "learning-rate"}
    assert setting(config, "batch-size") == DEFAULT_RUN_CONFIG["batch-size"]
    with pytest.raises(RunConfigError, match=r"no 'learning-rate'.*\[tool\.flwr\.app\.config\].*--set learning-rate="):
        setting(config, "learning-rate")


def test_a_value_of_the_wrong_type_in_a_run_config_is_refused():
    with pytest.raises(RunConfigError, match="seed="):
        setting({**DEFAULT_RUN_CONFIG, "seed": 1.5}, "seed")


def test_run_ids_come_in_one_format_and_do_not_repeat():
    ids = {mint_run_id("digits-dp") for _ in range(50)}
    assert len(ids) == 50
    assert all(re.fullmatch(r"digits-dp-\d{8}-\d{6}-[0-9a-f]{6}", i) for i in ids)
    assert re.fullmatch(r"run-\d{8}-\d{6}-[0-9a-f]{6}", mint_run_id())

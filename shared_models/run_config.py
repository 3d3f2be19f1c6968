"""The run config's keys, their defaults and types: the one Python mirror of ``[tool.flwr.app.config]``.

pyproject.toml's ``[tool.flwr.app.config]`` is where the defaults are set (``flwr run .`` reads them there);
:data:`DEFAULT_RUN_CONFIG` mirrors it once for the code that runs without that file (``fedge simulate``, ``fedge
run``, an installed wheel), and a test keeps the two equal. Everything below the apps' boundaries reads a run config
through :func:`setting`, which refuses a missing key by name instead of falling back to a second copy of a default.

Imports neither torch nor Flower: the server, the clients, the commands and the experiment code all use it.

>>> parse_setting("num-server-rounds", "3"), parse_setting("dp", False)
(3, False)
>>> "did you mean 'num-server-rounds'?" in str(unknown_setting("num-server-round"))
True
"""

from __future__ import annotations

import difflib
import os
import secrets
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from shared_models.errors import SharedModelsError

Value = bool | int | float | str

# Must stay equal to [tool.flwr.app.config] in pyproject.toml (tests/simulations/test_cli.py checks it).
DEFAULT_RUN_CONFIG: Mapping[str, Value] = MappingProxyType(
    {
        "num-server-rounds": 6,
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
        "qfedavg-q": 0.1,
        "round-timeout": 0.0,
        "max-in-flight": 0,
        "evaluate-every": 1,
        "site-accuracy-threshold": 0.5,
        "budget-aware-sampling": True,
        "min-replies": 1,
        "straggler-timeout": 0.0,
        "resume-from": "",
        "stream-aggregation": True,
        "pack-arrays": True,
        "server-ema": 0.0,
        "model": "digits-mlp",
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
        "local-epochs": 2,
        "batch-size": 128,
        "learning-rate": 2.0,
        "learning-rate-decay": 0.8,
        "momentum": 0.0,
        "dp": True,
        "dp-mode": "bk",
        "dp-fix-model": False,
        "noise-multiplier": 0.0,
        "target-epsilon": 3.0,
        "target-delta": 1e-5,
        "max-grad-norm": 1.0,
        "device": "auto",
        "runs-dir": "runs",
        "run-id": "",
        "progress": True,
        "project-dir": "",
    }
)

#: Prefixes of the open-ended keys: ``model-options.NAME`` reach the model factory as ``NAME=value``,
#: ``data-options.NAME`` the data loader. Flower flattens a TOML table ``[tool.flwr.app.config.model-options]``
#: into these dotted keys; :func:`options` also reads the nested form (an experiment file's
#: ``[run-config.model-options]`` table).
OPTION_PREFIXES = ("model-options", "data-options")

_TRUE, _FALSE = frozenset({"true", "1", "yes"}), frozenset({"false", "0", "no"})
_TYPE_NAMES = {bool: "a bool (true or false)", int: "an int", float: "a float", str: "a string"}


class RunConfigError(SharedModelsError):
    """A run config that is missing a key, names an unknown one, or holds a value of the wrong type."""


def unknown_setting(key: str) -> RunConfigError:
    """The error for a key that is not a run setting, suggesting the closest known one."""
    close = difflib.get_close_matches(key, DEFAULT_RUN_CONFIG, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return RunConfigError(f"unknown setting {key!r}; {hint}known settings: {', '.join(sorted(DEFAULT_RUN_CONFIG))}")


def parse_setting(key: str, value: Any) -> Value:
    """``value`` as the type of ``key``'s default: a string (``--set KEY=VALUE``) is parsed, a typed value
    (a command's option, a TOML value) is checked; an int is taken where a float is expected, a path where a
    string is. Raises :class:`RunConfigError` naming the key, the value and the type it needs."""
    if is_option_key(key):
        if not isinstance(value, bool | int | float | str) and not isinstance(value, os.PathLike):
            raise RunConfigError(f"{key}={value!r}: an option's value must be a bool, a number or a string")
        return os.fspath(value) if isinstance(value, os.PathLike) else value
    if key not in DEFAULT_RUN_CONFIG:
        raise unknown_setting(key)
    kind = type(DEFAULT_RUN_CONFIG[key])
    if isinstance(value, os.PathLike) and kind is str:
        return os.fspath(value)
    if isinstance(value, str) and kind is not str:
        return _parse_text(key, value.strip(), kind)
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if type(value) is not kind:
        raise RunConfigError(f"{key}={value!r}: expected {_TYPE_NAMES[kind]}")
    return value


def is_option_key(key: str) -> bool:
    """Whether ``key`` is a ``model-options.NAME`` or ``data-options.NAME`` key (any NAME).

    >>> is_option_key("model-options.hidden"), is_option_key("model-options"), is_option_key("dp")
    (True, False, False)
    """
    prefix, dot, name = key.partition(".")
    return bool(dot and name) and prefix in OPTION_PREFIXES


def options(config: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The ``prefix.NAME`` keys of a run config as ``{NAME: value}``, flat (``model-options.hidden``, as Flower
    passes them) or nested (``{"model-options": {"hidden": 64}}``, as a TOML table reads); hyphens in NAME become
    underscores, so ``model-options.hidden-size`` reaches ``hidden_size=``.

    >>> options({"model-options.hidden-size": 64, "dp": True}, "model-options")
    {'hidden_size': 64}
    """
    if prefix not in OPTION_PREFIXES:
        raise RunConfigError(f"{prefix!r} is not an option table; use one of {', '.join(OPTION_PREFIXES)}")
    found: dict[str, Any] = {}
    for key, value in _flatten(config).items():
        head, dot, name = key.partition(".")
        if head == prefix and dot and name:
            found[name.replace("-", "_")] = value
    return found


def _flatten(config: Mapping[str, Any], parent: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        full = f"{parent}.{key}" if parent else str(key)
        if isinstance(value, Mapping):
            flat.update(_flatten(value, full))
        else:
            flat[full] = value
    return flat


def flatten_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """A run config with any nested option table (``{"model-options": {"hidden": 64}}``) as Flower's dotted keys
    (``{"model-options.hidden": 64}``); every other key unchanged."""
    return _flatten(config)


def _parse_text(key: str, text: str, kind: type) -> Value:
    if kind is bool:
        if text.lower() not in _TRUE | _FALSE:
            raise RunConfigError(f"{key}={text!r}: expected {_TYPE_NAMES[bool]}")
        return text.lower() in _TRUE
    try:
        return kind(text)
    except ValueError:
        raise RunConfigError(f"{key}={text!r}: expected {_TYPE_NAMES[kind]}") from None


def setting(config: Mapping[str, Any], key: str) -> Any:
    """The value of ``key`` in a run config, as its default's type. A missing key is an error that names it and
    where to set it: there is no second copy of the default to fall back on."""
    if key not in DEFAULT_RUN_CONFIG:
        raise unknown_setting(key)
    if key not in config:
        raise RunConfigError(
            f"the run config has no {key!r}: set it in [tool.flwr.app.config] of the app's pyproject.toml "
            f"(fedge's default is {DEFAULT_RUN_CONFIG[key]!r}) or pass it with --set {key}=VALUE"
        )
    return parse_setting(key, config[key])


def mint_run_id(prefix: str = "run") -> str:
    """A new run id, ``<prefix>-YYYYMMDD-HHMMSS-<6 hex>``: sorts by start time, unique across machines.

    >>> mint_run_id("digits-dp")[:10]
    'digits-dp-'
    """
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"

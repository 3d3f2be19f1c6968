"""The one private Flower call (in-process simulation) is checked against the installed Flower."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest

from simulations import flower_adapter
from simulations.flower_adapter import PARAMETERS, PRIVATE_CALL, FlowerApiError, check_flower_simulation_api


def test_installed_flower_still_has_the_private_simulation_call():
    check_flower_simulation_api()  # raises FlowerApiError naming the call when Flower changes it
    from flwr.simulation.run_simulation import _run_simulation

    accepted = inspect.signature(_run_simulation).parameters
    assert set(PARAMETERS) <= set(accepted), f"{PRIVATE_CALL} changed its parameters: {sorted(accepted)}"


def test_a_changed_signature_fails_loudly_naming_the_call(monkeypatch):
    module = importlib.import_module("flwr.simulation.run_simulation")

    def changed(num_supernodes, client_app=None, server_app=None):  # a Flower that dropped most parameters
        raise AssertionError("must not be called")

    monkeypatch.setattr(module, "_run_simulation", changed)
    with pytest.raises(FlowerApiError, match=r"flwr\.simulation\.run_simulation\._run_simulation no longer takes"):
        check_flower_simulation_api()
    with pytest.raises(FlowerApiError, match="exit_event"):
        flower_adapter.run_simulation_in_process(
            server_app=None,
            client_app=None,
            run_config={},
            num_supernodes=1,
            backend_config={},
            app_dir=Path("."),
        )


def test_a_removed_call_fails_loudly_naming_it(monkeypatch):
    module = importlib.import_module("flwr.simulation.run_simulation")

    monkeypatch.delattr(module, "_run_simulation")
    with pytest.raises(FlowerApiError, match=r"_run_simulation no longer exists.*flwr 1\.42\.0"):
        check_flower_simulation_api()

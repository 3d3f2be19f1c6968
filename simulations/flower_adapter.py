"""The one place fedge calls a private Flower API: running a simulation in this process.

Flower 1.42's public ways to simulate do not fit ``fedge simulate``: ``flwr run`` against a local SuperLink takes
no Ray cluster address (``--ray-address``) and runs the ServerApp in another process, and
``flwr.simulation.run_simulation`` (deprecated) gives the ServerApp an empty run config. Flower's own
``run_simulation`` and ``flwr-simulation`` both call ``flwr.simulation.run_simulation._run_simulation``, which takes
the ServerApp's context (and so the run config), the node count and the backend config: fedge calls it here, and
nowhere else. :func:`check_flower_simulation_api` fails loudly, naming the call, when Flower changes it (a test runs
it), instead of a simulation failing halfway with a ``TypeError``.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

from shared_models.errors import FedgeError

PRIVATE_CALL = "flwr.simulation.run_simulation._run_simulation"
EXIT_EVENT = "flwr.supercore.telemetry.EventType.PYTHON_API_RUN_SIMULATION_LEAVE"
# The keyword arguments fedge passes; each must still be a parameter of Flower's function.
PARAMETERS = (
    "num_supernodes",
    "exit_event",
    "client_app",
    "server_app",
    "backend_name",
    "backend_config",
    "app_dir",
    "is_app",
    "server_app_context",
    "verbose_logging",
)


class FlowerApiError(FedgeError):
    """The installed Flower no longer has the private call fedge's in-process simulation relies on."""


def check_flower_simulation_api() -> None:
    """Raise :class:`FlowerApiError` unless Flower's private simulation call still takes what fedge passes."""
    import flwr

    fix = (
        f"fedge was built against flwr 1.42.0 and found flwr {flwr.__version__}; install the pinned version "
        '(pip install "fedge[train]") or update simulations/flower_adapter.py'
    )
    try:
        # the module, not the public function of the same name that flwr.simulation exports
        module = importlib.import_module("flwr.simulation.run_simulation")
        from flwr.supercore.telemetry import EventType
    except ImportError as e:
        raise FlowerApiError(f"{PRIVATE_CALL} cannot be imported ({e}); {fix}") from e
    function = getattr(module, "_run_simulation", None)
    if not callable(function):
        raise FlowerApiError(f"{PRIVATE_CALL} no longer exists; {fix}")
    if not hasattr(EventType, "PYTHON_API_RUN_SIMULATION_LEAVE"):
        raise FlowerApiError(f"{EXIT_EVENT} no longer exists; {fix}")
    accepted = inspect.signature(function).parameters
    missing = [name for name in PARAMETERS if name not in accepted]
    if missing:
        raise FlowerApiError(f"{PRIVATE_CALL} no longer takes {', '.join(missing)}; {fix}")


def run_simulation_in_process(
    *,
    server_app: Any,
    client_app: Any,
    run_config: dict[str, Any],
    num_supernodes: int,
    backend_config: dict[str, Any],
    app_dir: Path,
    verbose: bool = False,
) -> None:
    """Run ``server_app`` and ``num_supernodes`` simulated ``client_app`` nodes on Flower's Ray backend, here.

    The ServerApp's context carries ``run_config``; the ClientApps read theirs from ``app_dir`` (a Flower App whose
    run config defaults are the same values, see ``server/flower_app.py``). Exceptions from the ServerApp propagate.
    """
    check_flower_simulation_api()
    from flwr.app import Context, RecordDict
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.telemetry import EventType

    context = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config=dict(run_config))
    _run_simulation(
        num_supernodes=num_supernodes,
        exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
        client_app=client_app,
        server_app=server_app,
        backend_name="ray",
        backend_config=backend_config,
        app_dir=str(app_dir),
        is_app=True,
        server_app_context=context,
        verbose_logging=verbose,
    )

"""The one place fedge calls a private Flower API: running a simulation in this process.

Flower 1.42's public ways to simulate do not fit ``fedge simulate``: ``flwr run`` against a local SuperLink takes
no Ray cluster address (``--ray-address``) and runs the ServerApp in another process, and
``flwr.simulation.run_simulation`` (deprecated) gives the ServerApp an empty run config. Flower's own
``run_simulation`` and ``flwr-simulation`` both call ``flwr.simulation.run_simulation._run_simulation``, which takes
the ServerApp's context (and so the run config), the node count and the backend config: fedge calls it here, and
nowhere else. :func:`check_flower_simulation_api` fails loudly, naming the call, when Flower changes it (a test runs
it), instead of a simulation failing halfway with a ``TypeError``.

While that call runs, the simulation's queue thread is fedge's :func:`poll_nodes_with_messages` instead of Flower
1.42's ``add_messages_to_queue`` (``flwr.server.superlink.fleet.vce.vce_api``): Flower's asks every node in turn
for a message every 0.1 s, and each ask checks every stored message, so a pass costs nodes x messages checks under
the GIL; at 1,000 simulated nodes that thread was busy ~40% of the run (a profile of the driver), taking the CPU the
server and the Ray actors needed. fedge's asks, in one pass, only the nodes that have an undelivered message, with
the same LinkState call (so every check Flower makes on a message still runs), one message per node per pass and the
same 0.1 s wait. Upstream, an index of undelivered messages by destination node in the LinkState would give every
caller the same; until Flower has one, the swap lives here, is undone after the call, and fails loudly (like the
call above) when Flower's function or its LinkState's fields change.

Likewise the simulation's Ray backend is fedge's :class:`~simulations.flower_ray_backend.FedgeRayBackend` (Flower's
``RayBackend`` with a queue of two messages per actor, the global model sent to each actor once, not with every
message, and replies through shared memory, read in place; that module says why), swapped in by
:func:`fedge_ray_backend` and checked by :func:`check_ray_backend`.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import threading
from collections.abc import Iterator
from pathlib import Path
from queue import Queue
from typing import Any

from shared_models.errors import FedgeError

PRIVATE_CALL = "flwr.simulation.run_simulation._run_simulation"
EXIT_EVENT = "flwr.supercore.telemetry.EventType.PYTHON_API_RUN_SIMULATION_LEAVE"
QUEUE_THREAD = "flwr.server.superlink.fleet.vce.vce_api.add_messages_to_queue"
QUEUE_THREAD_PARAMETERS = ("state", "queue", "nodes_mapping", "f_stop")
RAY_BACKEND_MODULE = "flwr.server.superlink.fleet.vce.backend.raybackend"
#: the in-memory LinkState's fields the queue thread reads: its message store and the lock that guards it
LINKSTATE_FIELDS = ("message_ins_store", "lock")
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
    # the module, not the public function of the same name that flwr.simulation exports
    function = _flower_function(PRIVATE_CALL, fix)
    try:
        from flwr.supercore.telemetry import EventType
    except ImportError as e:
        raise FlowerApiError(f"{EXIT_EVENT} cannot be imported ({e}); {fix}") from e
    if not hasattr(EventType, "PYTHON_API_RUN_SIMULATION_LEAVE"):
        raise FlowerApiError(f"{EXIT_EVENT} no longer exists; {fix}")
    accepted = inspect.signature(function).parameters
    missing = [name for name in PARAMETERS if name not in accepted]
    if missing:
        raise FlowerApiError(f"{PRIVATE_CALL} no longer takes {', '.join(missing)}; {fix}")
    check_queue_thread(fix)
    check_ray_backend(fix)


def check_ray_backend(fix: str) -> None:
    """Raise :class:`FlowerApiError` unless Flower's simulation still builds its Ray backend from the name
    :func:`fedge_ray_backend` replaces, and the parts of it fedge's backend builds on are still there."""
    start_vce = _flower_function("flwr.server.superlink.fleet.vce.vce_api.start_vce", fix)
    if "from .backend.raybackend import RayBackend" not in inspect.getsource(start_vce):
        raise FlowerApiError(f"Flower's start_vce no longer imports RayBackend from {RAY_BACKEND_MODULE}; {fix}")
    from simulations.flower_ray_backend import check_backend_api

    missing = check_backend_api()
    if missing:
        raise FlowerApiError(f"Flower's Ray backend no longer has {', '.join(missing)}; {fix}")


def _flower_function(path: str, fix: str) -> Any:
    """The function Flower has at ``path`` (``package.module.name``), else :class:`FlowerApiError` naming it."""
    module_name, _, name = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise FlowerApiError(f"{path} cannot be imported ({e}); {fix}") from e
    function = getattr(module, name, None)
    if not callable(function):
        raise FlowerApiError(f"{path} no longer exists; {fix}")
    return function


def check_queue_thread(fix: str) -> None:
    """Raise :class:`FlowerApiError` unless Flower's simulation queue thread and in-memory LinkState are still what
    :func:`poll_nodes_with_messages` replaces and reads."""
    function = _flower_function(QUEUE_THREAD, fix)
    try:
        from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
    except ImportError as e:
        raise FlowerApiError(f"Flower's InMemoryLinkState cannot be imported ({e}); {fix}") from e
    if function is not poll_nodes_with_messages:
        parameters = tuple(inspect.signature(function).parameters)
        if parameters != QUEUE_THREAD_PARAMETERS:
            raise FlowerApiError(f"{QUEUE_THREAD} now takes ({', '.join(parameters)}); {fix}")
    source = inspect.getsource(InMemoryLinkState.__init__)
    missing = [name for name in LINKSTATE_FIELDS if f"self.{name}" not in source]
    if missing:
        raise FlowerApiError(f"Flower's InMemoryLinkState no longer has {', '.join(missing)}; {fix}")


def nodes_with_messages(state: Any, nodes: Any) -> list[int]:
    """The nodes of ``nodes`` (in their order) that have an undelivered message in ``state``, read in one pass over
    its message store; every node of ``nodes`` where the state is not Flower's in-memory one."""
    store, lock = getattr(state, "message_ins_store", None), getattr(state, "lock", None)
    if store is None or lock is None:
        return list(nodes)
    with lock:
        waiting = {message.metadata.dst_node_id for message in store.values() if message.metadata.delivered_at == ""}
    return [node for node in nodes if node in waiting]


def poll_nodes_with_messages(state: Any, queue: Queue, nodes_mapping: Any, f_stop: threading.Event) -> None:
    """Flower's simulation queue thread (see the module's docstring), asking only nodes with a message waiting:
    each pass hands at most one message per node to the workers' queue, through the LinkState's own
    ``get_message_ins`` (which checks the message's expiry and federation and marks it delivered)."""
    while not f_stop.is_set():
        for node_id in nodes_with_messages(state, nodes_mapping.keys()):
            for message in state.get_message_ins(node_id=node_id, limit=1):
                queue.put(message)
        f_stop.wait(0.1)


@contextlib.contextmanager
def _swapped(module_name: str, name: str, replacement: Any) -> Iterator[None]:
    """Within the block, ``module_name.name`` is ``replacement``; Flower's own is put back after, even on failure."""
    module = importlib.import_module(module_name)
    flowers = getattr(module, name)
    setattr(module, name, replacement)
    try:
        yield
    finally:
        setattr(module, name, flowers)


def fedge_ray_backend() -> contextlib.AbstractContextManager[None]:
    """Within the block, Flower's simulation builds :class:`~simulations.flower_ray_backend.FedgeRayBackend` where it
    builds its ``RayBackend`` (``start_vce`` imports the name from its module when the simulation starts)."""
    from simulations.flower_ray_backend import FedgeRayBackend

    return _swapped(RAY_BACKEND_MODULE, "RayBackend", FedgeRayBackend)


def fedge_queue_thread() -> contextlib.AbstractContextManager[None]:
    """Within the block, Flower's simulation starts :func:`poll_nodes_with_messages` as its queue thread."""
    module_name, _, name = QUEUE_THREAD.rpartition(".")
    return _swapped(module_name, name, poll_nodes_with_messages)


def run_simulation_in_process(
    *,
    server_app: Any,
    client_app: Any,
    run_config: dict[str, Any],
    num_supernodes: int,
    backend_config: dict[str, Any],
    app_dir: Path,
    verbose: bool = False,
    fedge_engine: bool = True,
) -> None:
    """Run ``server_app`` and ``num_supernodes`` simulated ``client_app`` nodes on Ray, here.

    The ServerApp's context carries ``run_config``; the ClientApps read theirs from ``app_dir`` (a Flower App whose
    run config defaults are the same values, see ``server/flower_app.py``). Exceptions from the ServerApp propagate.
    With ``fedge_engine`` (the default) the simulation runs fedge's queue thread and Ray backend; without, Flower's
    own (the stock-Flower peer of the ``sim_scale`` benchmark).
    """
    check_flower_simulation_api()
    from flwr.app import Context, RecordDict
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.telemetry import EventType

    context = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config=dict(run_config))
    engine = (fedge_queue_thread(), fedge_ray_backend()) if fedge_engine else ()
    with contextlib.ExitStack() as stack:
        for part in engine:
            stack.enter_context(part)
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


def in_memory_federation(num_nodes: int) -> tuple[Any, Any, list[int]]:
    """Flower's in-memory LinkState with one run and ``num_nodes`` registered nodes, and an InMemoryGrid on it, built
    as Flower's simulation builds them: (state, grid, node ids). For tests and the ``sim_scale`` diagnostic of the
    queue thread."""
    from flwr.proto.task_pb2 import Task
    from flwr.server.superlink.fleet.vce.vce_api import _register_nodes
    from flwr.server.superlink.linkstate import LinkStateFactory
    from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
    from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.superlink.federation import NoOpFederationManager
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
    state = factory.state()
    run = Run.create_empty(run_id=1)
    run.primary_task_id, run.federation_id = 7, NOOP_FEDERATION_ID
    state.run_ids[1] = RunRecord(run=run)
    state.task_store[7] = Task(task_id=7, run_id=1)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 7, 1, 1
    nodes = list(_register_nodes(num_nodes, factory))
    grid = InMemoryGrid(state_factory=factory)
    grid.set_run(run)
    return state, grid, nodes

"""The one private Flower call (in-process simulation) is checked against the installed Flower."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest

from simulations import flower_adapter
from simulations.flower_adapter import PARAMETERS, PRIVATE_CALL, FlowerApiError, check_flower_simulation_api


def run_empty_simulation(**options) -> None:
    """fedge's in-process simulation call with no apps: for what it checks and sets up before Flower's call."""
    flower_adapter.run_simulation_in_process(
        server_app=None,
        client_app=None,
        run_config={},
        num_supernodes=1,
        backend_config={},
        app_dir=Path("."),
        **options,
    )


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
        run_empty_simulation()


def test_a_removed_call_fails_loudly_naming_it(monkeypatch):
    module = importlib.import_module("flwr.simulation.run_simulation")

    monkeypatch.delattr(module, "_run_simulation")
    with pytest.raises(FlowerApiError, match=r"_run_simulation no longer exists.*flwr 1\.42\.0"):
        check_flower_simulation_api()


# -------------------------------------------------------------- the simulation's queue thread (fedge's, not Flower's)


def _push(grid, nodes_and_tags: list[tuple[int, int]]) -> list[str]:
    from flwr.app import ConfigRecord, Message, RecordDict

    messages = [
        Message(RecordDict({"config": ConfigRecord({"tag": tag})}), dst_node_id=node, message_type="train")
        for node, tag in nodes_and_tags
    ]
    return list(grid.push_messages(messages))


def _drain(thread_function, state, nodes: list[int], expected: int) -> list:
    """Run ``thread_function`` as the simulation would until ``expected`` messages reached the workers' queue."""
    import queue
    import threading
    import time

    out: queue.Queue = queue.Queue()
    stop = threading.Event()
    thread = threading.Thread(target=thread_function, args=(state, out, {n: i for i, n in enumerate(nodes)}, stop))
    thread.start()
    got = []
    deadline = time.monotonic() + 30
    try:
        while len(got) < expected and time.monotonic() < deadline:
            try:
                got.append(out.get(timeout=0.5))
            except queue.Empty:
                pass
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    return got + [out.get_nowait() for _ in range(out.qsize())]


def test_fedge_queue_thread_delivers_what_flowers_does_each_message_once():
    from flwr.server.superlink.fleet.vce.vce_api import add_messages_to_queue

    pushes = [(0, 1), (0, 2), (3, 3), (7, 4), (7, 5), (7, 6)]  # node index, tag: several for one node
    delivered = {}
    for name, function in (("flower", add_messages_to_queue), ("fedge", flower_adapter.poll_nodes_with_messages)):
        state, grid, nodes = flower_adapter.in_memory_federation(10)
        ids = _push(grid, [(nodes[i], tag) for i, tag in pushes])
        got = _drain(function, state, nodes, len(pushes))
        assert sorted(m.metadata.message_id for m in got) == sorted(ids), name  # every one, none twice
        assert all(m.metadata.delivered_at for m in got)  # marked delivered by the LinkState itself
        delivered[name] = sorted((nodes.index(m.metadata.dst_node_id), m.content["config"]["tag"]) for m in got)
    assert delivered["fedge"] == delivered["flower"] == sorted(pushes)


def test_fedge_queue_thread_asks_only_nodes_with_a_message_waiting_and_picks_up_later_ones():
    state, grid, nodes = flower_adapter.in_memory_federation(50)
    assert flower_adapter.nodes_with_messages(state, nodes) == []
    _push(grid, [(nodes[40], 1), (nodes[2], 2), (nodes[40], 3)])
    assert flower_adapter.nodes_with_messages(state, nodes) == [nodes[2], nodes[40]]  # in the nodes' order, once
    assert len(_drain(flower_adapter.poll_nodes_with_messages, state, nodes, 3)) == 3
    assert flower_adapter.nodes_with_messages(state, nodes) == []  # delivered: nobody is asked any more
    later = _push(grid, [(nodes[9], 4)])  # a message pushed after the first ones went out is still picked up
    assert [m.metadata.message_id for m in _drain(flower_adapter.poll_nodes_with_messages, state, nodes, 1)] == later


@pytest.mark.parametrize("fedge_engine", [True, False])
def test_the_simulation_runs_with_fedges_queue_thread_and_backend_and_flowers_are_put_back(monkeypatch, fedge_engine):
    from simulations.flower_ray_backend import FedgeRayBackend

    vce_api = importlib.import_module("flwr.server.superlink.fleet.vce.vce_api")
    backend_module = importlib.import_module(flower_adapter.RAY_BACKEND_MODULE)
    flowers, flowers_backend = vce_api.add_messages_to_queue, backend_module.RayBackend
    seen = []

    def recording(**kwargs):
        seen.append((vce_api.add_messages_to_queue, backend_module.RayBackend))
        raise RuntimeError("the simulation failed")

    # Flower's call with every parameter fedge passes, so the API check passes and the swap is what is tested
    recording.__signature__ = inspect.Signature(
        [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY) for name in PARAMETERS]
    )
    monkeypatch.setattr(importlib.import_module("flwr.simulation.run_simulation"), "_run_simulation", recording)
    with pytest.raises(RuntimeError, match="the simulation failed"):
        run_empty_simulation(fedge_engine=fedge_engine)
    if fedge_engine:
        assert seen == [(flower_adapter.poll_nodes_with_messages, FedgeRayBackend)]
    else:  # the stock-Flower peer's engine: Flower's own parts
        assert seen == [(flowers, flowers_backend)]
    assert vce_api.add_messages_to_queue is flowers  # put back, even after a failure
    assert backend_module.RayBackend is flowers_backend


def test_a_changed_ray_backend_fails_loudly_naming_it(monkeypatch):
    from flwr.simulation.ray_transport.ray_actor import VirtualClientEngineActor

    def run(self, message, context):  # a Flower whose actors are called differently
        raise AssertionError("must not be called")

    monkeypatch.setattr(VirtualClientEngineActor, "run", run)
    with pytest.raises(FlowerApiError, match=r"Ray backend no longer has VirtualClientEngineActor\.run"):
        check_flower_simulation_api()


def test_a_changed_queue_thread_fails_loudly_naming_it(monkeypatch):
    vce_api = importlib.import_module("flwr.server.superlink.fleet.vce.vce_api")

    def changed(state, queue, nodes_mapping, f_stop, poll_interval):  # a Flower whose queue thread changed
        raise AssertionError("must not be called")

    monkeypatch.setattr(vce_api, "add_messages_to_queue", changed)
    with pytest.raises(FlowerApiError, match=r"vce_api\.add_messages_to_queue now takes .*poll_interval"):
        check_flower_simulation_api()
    monkeypatch.delattr(vce_api, "add_messages_to_queue")
    with pytest.raises(FlowerApiError, match=r"add_messages_to_queue no longer exists"):
        check_flower_simulation_api()

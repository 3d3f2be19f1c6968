"""fedge's Ray backend (simulations/flower_ray_backend.py) on a real local Ray: every message reaches the ClientApp
with the server's own arrays, a model's large arrays go to the object store once, a new model is never answered with
the last one's arrays, and each actor is given its next message while it runs one."""

from __future__ import annotations

import gc
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from simulations import flower_ray_backend
from simulations.flower_ray_backend import (
    SHARED_MIN_BYTES,
    FedgeRayBackend,
    ModelShare,
    SharedArray,
    restore_shared_arrays,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ECHO = ClientApp()


@ECHO.train()
def echo(msg: Message, context: Context) -> Message:
    """Replies with the arrays it was given, which process it ran in, and its node's message count."""
    time.sleep(float(msg.content["config"]["sleep"]))
    if msg.content["config"]["fail"]:
        raise ValueError("this node's data is broken")
    seen = int(context.state["count"]["n"]) + 1 if "count" in context.state else 1
    context.state["count"] = MetricRecord({"n": seen})
    context.state["kept"] = ArrayRecord({"w": msg.content["arrays"]["w"]})  # a node that keeps arrays in its state
    reply = RecordDict({"arrays": msg.content["arrays"], "metrics": MetricRecord({"pid": os.getpid(), "seen": seen})})
    return Message(reply, reply_to=msg)


def echo_app() -> ClientApp:
    return ECHO


def model(seed: int) -> ArrayRecord:
    """A large array (shared through the object store) and a small one (pickled with each message)."""
    rng = np.random.default_rng(seed)
    big = rng.standard_normal(SHARED_MIN_BYTES // 4 + 1000).astype(np.float32)
    return ArrayRecord({"w": Array(big), "b": Array(rng.standard_normal(10).astype(np.float32))})


def message(content: RecordDict, node: int) -> Message:
    msg = Message(content, dst_node_id=node, message_type="train")
    msg.metadata.__dict__["_message_id"] = f"m-{node}-{time.monotonic_ns()}"
    return msg


def content_of(arrays: ArrayRecord, *, sleep: float = 0.0, fail: bool = False) -> RecordDict:
    return RecordDict({"arrays": arrays, "config": ConfigRecord({"sleep": sleep, "fail": fail})})


@pytest.fixture(scope="module")
def backend():
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 7, 1, 0  # as the simulation's ServerApp has them
    b = FedgeRayBackend(
        {
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": 2, "log_to_driver": False, "include_dashboard": False},
        }
    )
    b.build(echo_app)
    yield b
    b.terminate()


@pytest.fixture
def puts(monkeypatch) -> list:
    """Every value the backend puts in Ray's object store (each still put)."""
    put = []
    real_put = flower_ray_backend.ray.put
    monkeypatch.setattr(flower_ray_backend.ray, "put", lambda value: put.append(value) or real_put(value))
    return put


def contexts(n: int) -> dict[int, Context]:
    return {
        node: Context(run_id=1, node_id=node, node_config={"partition-id": node}, state=RecordDict(), run_config={})
        for node in range(n)
    }


def run_all(backend, jobs: list[tuple[Message, Context]]) -> list[tuple[Message, Context]]:
    with ThreadPoolExecutor(backend.num_workers) as pool:
        return list(pool.map(lambda job: backend.process_message(*job), jobs))


def same_arrays(a: ArrayRecord, b: ArrayRecord) -> bool:
    return set(a) == set(b) and all(a[k].data == b[k].data and a[k].shape == b[k].shape for k in a)


def test_every_message_gets_the_servers_arrays_and_each_models_large_array_is_put_once(backend, puts):
    models = {seed: model(seed) for seed in (1, 2)}
    contents = {seed: content_of(arrays, sleep=0.05) for seed, arrays in models.items()}
    ctx = contexts(12)
    # the two models interleaved: each actor switches between them again and again
    jobs = [(message(contents[1 + node % 2], node), ctx[node]) for node in range(12)]
    replies = run_all(backend, jobs)

    for node, (reply, updated) in enumerate(replies):
        assert not reply.has_error(), reply.error
        assert same_arrays(reply.content["arrays"], models[1 + node % 2]), f"node {node} trained on the wrong model"
        assert updated.state["count"]["n"] == 1  # each node its own context
    assert len({int(reply.content["metrics"]["pid"]) for reply, _ in replies}) == 2  # both actors ran messages
    # one put per model's large array; the small one travels with each message
    assert [len(p.data) for p in puts] == [len(models[1]["w"].data)] * 2
    assert backend.peak_in_hand == 2  # an actor had its next message while it ran one, and never more
    # a reply's large array reads the object store's memory in place; the small one came as bytes
    reply_arrays = replies[0][0].content["arrays"]
    assert isinstance(reply_arrays["w"].data, memoryview) and reply_arrays["w"].data.readonly
    assert isinstance(reply_arrays["b"].data, bytes)
    assert np.array_equal(reply_arrays["w"].numpy(), models[1]["w"].numpy())


def test_a_new_model_is_never_answered_with_the_last_ones_arrays(backend):
    ctx = contexts(4)
    for seed in range(10, 16):  # each model freed before the next: its objects' addresses are reused
        arrays = model(seed)
        expected = {k: (a.data, a.shape) for k, a in arrays.items()}
        content = content_of(arrays)
        replies = run_all(backend, [(message(content, node), ctx[node]) for node in range(4)])
        for reply, _ in replies:
            got = reply.content["arrays"]
            assert {k: (a.data, a.shape) for k, a in got.items()} == expected, f"model {seed}: stale arrays"
        del arrays, content, replies
        gc.collect()


def test_a_nodes_state_comes_back_with_its_own_bytes_and_goes_out_again(backend):
    arrays = model(5)
    context = contexts(1)[0]
    for n in (1, 2):
        reply, context = backend.process_message(message(content_of(arrays), 0), context)
        assert reply.content["metrics"]["seen"] == n  # the state the last message left is the one this one got
        kept = context.state["kept"]["w"]
        assert isinstance(kept.data, bytes) and kept.data == arrays["w"].data  # not a view pinning the object store


def test_a_failing_clientapp_is_an_error_for_its_message_only(backend):
    from flwr.clientapp.client_app import ClientAppException

    ctx = contexts(4)
    arrays = model(3)
    with pytest.raises(ClientAppException, match="this node's data is broken"):
        backend.process_message(message(content_of(arrays, fail=True), 0), ctx[0])
    reply, _ = backend.process_message(message(content_of(arrays), 1), ctx[1])
    assert same_arrays(reply.content["arrays"], arrays)
    assert backend._in_hand == [0, 0]


def stubbed(arrays: ArrayRecord, refs: dict) -> RecordDict:
    """A message content as the actor unpickles it: each shared array a SharedArray (unpickling, like this, skips
    ArrayRecord's type check)."""
    record = ArrayRecord(dict(arrays.items()))
    for name, ref in refs.items():
        record.__dict__["_data"][name] = SharedArray(ref)
    return RecordDict({"arrays": record})


def test_restore_takes_the_held_model_and_fetches_only_a_new_one(backend):
    import ray

    first, second = model(21), model(22)
    refs = {"w": ray.put(first["w"])}
    held: dict = {}
    content = stubbed(first, refs)
    assert restore_shared_arrays(content, held) == 1
    assert same_arrays(content["arrays"], first)

    again = stubbed(first, {"w": ray.put(first["w"]) and refs["w"]})
    assert restore_shared_arrays(again, held) == 0  # the actor's held model: nothing fetched
    assert same_arrays(again["arrays"], first)

    new_refs = {"w": ray.put(second["w"])}
    new = stubbed(second, new_refs)
    assert restore_shared_arrays(new, held) == 1
    assert same_arrays(new["arrays"], second)
    assert set(held) == set(new_refs.values())  # the last model only


def test_the_share_keeps_about_two_models_and_forgets_the_oldest(backend):
    share = ModelShare()
    contents = [content_of(model(seed)) for seed in range(30, 34)]
    for c in contents:
        share.share(c)
    held = [entry[0] for entry in share._arrays.values()]
    assert held == [contents[2]["arrays"]["w"], contents[3]["arrays"]["w"]]
    share.share(contents[3])  # held already: nothing new is put
    assert len(share._arrays) == 2


def test_concurrent_messages_of_one_model_put_it_once(backend, puts):
    share = ModelShare()
    content = content_of(model(40))
    threads = [threading.Thread(target=share.share, args=(content,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(puts) == 1


def slot_counts(backend) -> list[dict[str, int]]:
    import ray

    return ray.get([actor.reply_slots.remote() for actor in backend._actors])


def test_replies_come_back_through_the_actors_shared_memory_and_free_it_when_dropped(backend):
    from simulations.flower_ray_backend import REPLY_VIEWS

    before = slot_counts(backend)
    assert all(c["enabled"] for c in before)  # the actors run on the driver's Ray node
    arrays = model(50)
    ctx = contexts(6)
    replies = run_all(backend, [(message(content_of(arrays, sleep=0.02), node), ctx[node]) for node in range(6)])
    for reply, _ in replies:
        assert same_arrays(reply.content["arrays"], arrays)
    after = slot_counts(backend)
    assert sum(a["placed"] - b["placed"] for a, b in zip(after, before, strict=True)) == 6
    assert REPLY_VIEWS.in_use() > 0  # the replies' large arrays are read where the actors put them
    del replies, reply
    gc.collect()
    assert REPLY_VIEWS.in_use() == 0  # dropped: every slot is free for the actors again


def test_replies_beyond_the_free_slots_go_through_ray_and_none_is_lost(backend):
    from simulations.reply_slots import SLOTS

    before = slot_counts(backend)
    arrays = model(60)
    n = 2 * SLOTS + 8  # more replies held at once than both actors have slots
    ctx = contexts(n)
    held = run_all(backend, [(message(content_of(arrays), node), ctx[node]) for node in range(n)])
    assert all(same_arrays(reply.content["arrays"], arrays) for reply, _ in held)
    middle = slot_counts(backend)
    assert sum(m["fallbacks"] - b["fallbacks"] for m, b in zip(middle, before, strict=True)) >= n - 2 * SLOTS
    del held
    gc.collect()
    # every slot free again: the next replies take slots, not Ray's object store
    reply, _ = backend.process_message(message(content_of(arrays), 0), contexts(1)[0])
    assert same_arrays(reply.content["arrays"], arrays)
    end = slot_counts(backend)
    assert sum(e["placed"] - m["placed"] for e, m in zip(end, middle, strict=True)) == 1
    assert sum(e["fallbacks"] - m["fallbacks"] for e, m in zip(end, middle, strict=True)) == 0

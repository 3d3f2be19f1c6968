"""fedge's Ray backend for Flower's simulation: Flower 1.42's ``RayBackend`` with three changes in how messages travel
between the driver and the Ray actors. Each simulated client is still its own Flower node with its own context (its
accountant), handled by Flower's own workers, and the ClientApp still gets every message whole.

- **Each actor has the next message queued.** Flower's backend hands an actor its next message only once the driver
  has fetched the actor's last reply, so the actor waits while the driver unpickles that reply and pickles and stores
  the next message: at 1,000 clients on 2 cores about a fifth of the round. Here Flower's simulation runs
  ``ACTOR_QUEUE_DEPTH`` workers per actor and each message goes to the actor with the fewest in hand; Ray runs one
  actor's calls in order, one at a time, so the next one is ready when the last one ends.
- **The global model goes to each actor once, not with every message.** Flower's strategies give every message of
  a round the same ``RecordDict``. Its arrays of ``SHARED_MIN_BYTES`` or more are put in Ray's object store once;
  a message carries a reference to each, and an actor fetches what it does not already hold and keeps the arrays of
  the last model it received (one model's worth). Before the ClientApp runs, the message has its own ``Array``
  values back, equal to the server's.
- **A reply's large arrays come back through shared memory, read in place.** An actor on the driver's own Ray node
  copies them into a free slot of its shared-memory segment and Ray carries only where they lie
  (:mod:`simulations.reply_slots`, which says what that saves); elsewhere, or with no slot free, it pickles them as
  out-of-band buffers, which Ray copies once, straight into its object store. Either way the driver's reply
  ``Array`` reads them where they lie (``data`` a read-only ``memoryview``, not ``bytes``): the server folds each
  reply into its running mean and drops it, which frees the slot (or Ray's memory). A server that keeps replies
  makes its own copies (:func:`server.rounds.owned_arrays`), and so does this backend of the node's state it hands
  back.

Upstream, these would be options of Flower's ``RayBackend`` (a queue depth per actor; deduplicating records that
several messages share; zero-copy arrays; replies through shared memory on one machine). Until then
:func:`simulations.flower_adapter.run_simulation_in_process` puts this class where Flower's simulation looks for its
Ray backend, for the length of the call, and :func:`check_backend_api` fails loudly when the Flower parts it builds
on change.
"""

from __future__ import annotations

import contextlib
import inspect
import pickle
import threading
from collections import OrderedDict
from typing import Any

import ray
from flwr.app import Array, Context, Message, RecordDict
from flwr.common.constant import PARTITION_ID_KEY
from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend
from flwr.simulation.ray_transport.ray_actor import BasicActorPool, VirtualClientEngineActor

from server.rounds import owned_arrays
from simulations.reply_slots import ReplySlots, ReplyViews

#: messages an actor has in hand at most: the one it runs and the next
ACTOR_QUEUE_DEPTH = 2
#: arrays this large or larger go through Ray's object store once per model instead of once per message
SHARED_MIN_BYTES = 64 * 1024
#: how many models' worth of shared arrays the driver keeps in the object store (a round's train and evaluate model)
KEEP_MODELS = 2


class SharedArray:
    """Stands in an unpickled message for an ``Array`` that was put in Ray's object store once: only ``ref`` was
    pickled. The actor swaps it back for the ``Array`` before the ClientApp sees the message."""

    __slots__ = ("ref",)

    def __init__(self, ref: ray.ObjectRef) -> None:
        self.ref = ref


def _held_ref(held: dict[int, tuple[Array, ray.ObjectRef]], array: Array) -> ray.ObjectRef | None:
    """``array``'s reference in ``held`` (keyed by ``id``), if it is that very object: not a new one at a reused
    address."""
    hit = held.get(id(array))
    return hit[1] if hit is not None and hit[0] is array else None


def _fields(array: Array, data: Any, tag: str = "array") -> tuple:
    return (tag, array.dtype, tuple(array.shape), array.stype, data)


def _array_state(array: Array, shared: dict[int, tuple[Array, ray.ObjectRef]]) -> tuple:
    """How Ray pickles an ``Array`` in the driver: its reference where it is shared, else its fields."""
    ref = _held_ref(shared, array)
    if ref is not None:
        return ("shared", ref)
    return _fields(array, array.data if isinstance(array.data, bytes) else bytes(array.data))  # a reply's view


def _reply_state(array: Array) -> tuple:
    """How Ray pickles an ``Array`` in an actor (its replies): a large ``data`` as an out-of-band buffer."""
    return _fields(array, pickle.PickleBuffer(array.data) if len(array.data) >= SHARED_MIN_BYTES else array.data)


def _from_state(state: tuple) -> Array | SharedArray:
    if state[0] == "shared":
        return SharedArray(state[1])
    _, dtype, shape, stype, data = state
    if isinstance(data, bytes):
        return Array(dtype=dtype, shape=shape, stype=stype, data=data)
    if state[0] == "slot":  # a reply's array in its actor's shared-memory slot (simulations/reply_slots.py)
        data = REPLY_VIEWS.array_data(data)
    # an out-of-band buffer or a slot: Array() takes only bytes, so its fields are set as Array.__init__ sets them
    array = Array.__new__(Array)
    array.dtype, array.shape, array.stype, array.data = dtype, shape, stype, memoryview(data).toreadonly()
    return array


#: the driver's mappings of its actors' reply segments, and the replies' arrays still read from them
REPLY_VIEWS = ReplyViews()


class ModelShare:
    """Driver side: the large arrays of the last messages' contents, each put in Ray's object store once. While
    :meth:`register` is in force, Ray pickles such an ``Array`` (in this process) as its reference.

    An array is held (and so is its copy in the object store) until the held arrays pass ``KEEP_MODELS`` times the
    largest content's: the oldest go first. Messages already sent keep what they reference alive (Ray counts the
    references a pickled message holds); a message pickled after its arrays went is pickled whole."""

    def __init__(self) -> None:
        self._arrays: OrderedDict[int, tuple[Array, ray.ObjectRef]] = OrderedDict()
        self._bytes = 0
        self._budget = 0
        self._lock = threading.Lock()

    def share(self, content: RecordDict) -> None:
        """Put ``content``'s large arrays in the object store unless they already are there."""
        large = [
            a for record in content.array_records.values() for a in record.values() if len(a.data) >= SHARED_MIN_BYTES
        ]
        with self._lock:
            self._budget = max(self._budget, KEEP_MODELS * sum(len(a.data) for a in large))
            for a in large:
                if _held_ref(self._arrays, a) is not None:
                    self._arrays.move_to_end(id(a))
                    continue
                self._arrays[id(a)] = (a, ray.put(a))  # pickled whole: `a` was not held while it was put
                self._bytes += len(a.data)
            while self._bytes > self._budget:
                _, (gone, _) = self._arrays.popitem(last=False)
                self._bytes -= len(gone.data)

    def register(self) -> None:
        held = self._arrays  # the serializer only reads it, with the GIL: one lookup per Array

        def serialize(array: Array) -> tuple:
            return _array_state(array, held)

        ray.util.register_serializer(Array, serializer=serialize, deserializer=_from_state)

    @staticmethod
    def deregister() -> None:
        ray.util.deregister_serializer(Array)


@ray.remote
class FedgeClientAppActor(VirtualClientEngineActor):
    """Flower's ``ClientAppActor``, which first gives the message back the arrays that came as references, and
    returns its reply's large arrays through its shared-memory slots where it can."""

    def __init__(self, on_actor_init_fn: Any = None, driver_node: str | None = None) -> None:
        super().__init__()
        if on_actor_init_fn:
            on_actor_init_fn()
        self._model: dict[ray.ObjectRef, Array] = {}
        # replies through shared memory only where the driver can map it: on this very Ray node
        slots = self._slots = ReplySlots(enabled=driver_node == ray.get_runtime_context().get_node_id())

        def serialize(array: Array) -> tuple:
            where = slots.place(array)
            return _reply_state(array) if where is None else _fields(array, where, tag="slot")

        ray.util.register_serializer(Array, serializer=serialize, deserializer=_from_state)

    def run(self, client_app_fn: Any, message: Message, cid: str, context: Context) -> tuple[str, Message, Context]:
        restore_shared_arrays(message.content, self._model)
        cid, out_message, context = super().run(client_app_fn, message, cid, context)
        records = [context.state, *([out_message.content] if out_message.has_content() else [])]
        arrays = (a for r in records for ar in r.array_records.values() for a in ar.values())
        self._slots.plan([a for a in arrays if len(a.data) >= SHARED_MIN_BYTES])  # Ray pickles the reply next
        return cid, out_message, context

    def reply_slots(self) -> dict[str, int]:
        """How this actor's replies went: through a slot, or through Ray for want of one (for tests)."""
        slots = self._slots
        return {"placed": slots.placed_replies, "fallbacks": slots.fallbacks, "enabled": int(slots.enabled)}

    def close_reply_slots(self) -> None:
        self._slots.close()


def restore_shared_arrays(content: RecordDict, held: dict[ray.ObjectRef, Array]) -> int:
    """Swap every :class:`SharedArray` in ``content`` for its ``Array``: from ``held`` (the last model's arrays) or,
    for any not there, from the object store; ``held`` then keeps exactly this message's arrays. Returns how many
    arrays came from the object store."""
    slots = [
        (record, name, value.ref)
        for record in content.array_records.values()
        for name, value in record.items()
        if isinstance(value, SharedArray)
    ]
    missing = list({ref: None for _, _, ref in slots if ref not in held})
    fetched = dict(zip(missing, ray.get(missing), strict=True)) if missing else {}
    arrays = {ref: held[ref] if ref in held else fetched[ref] for _, _, ref in slots}
    for record, name, ref in slots:
        record[name] = arrays[ref]
    if missing:
        held.clear()
        held.update(arrays)
    return len(missing)


class FedgeRayBackend(RayBackend):
    """Flower's ``RayBackend`` with a queue of ``ACTOR_QUEUE_DEPTH`` per actor, the model sent once per actor and
    replies through shared memory, read in place (see the module's docstring)."""

    def build(self, app_fn: Any) -> None:
        driver_node = ray.get_runtime_context().get_node_id()
        self.pool = BasicActorPool(
            actor_type=FedgeClientAppActor,
            client_resources=self.client_resources,
            actor_kwargs={**self.actor_kwargs, "driver_node": driver_node},
        )
        self.pool.add_actors_to_pool(self.pool.actors_capacity)
        self.app_fn = app_fn
        self._actors = list(self.pool.pool)  # never taken out: every actor stays in Flower's pool for terminate()
        self._in_hand = [0] * len(self._actors)
        self.peak_in_hand = 0  # the most messages one actor had at once (for tests)
        self._lock = threading.Lock()
        self._share = ModelShare()
        self._share.register()

    @property
    def num_workers(self) -> int:
        return ACTOR_QUEUE_DEPTH * (self.pool.num_actors if self.pool else 0)

    def process_message(self, message: Message, context: Context) -> tuple[Message, Context]:
        if self.pool is None or self.app_fn is None:
            raise ValueError("the backend has no actors: call build() before processing messages")
        partition_id = context.node_config[PARTITION_ID_KEY]
        self._share.share(message.content)
        with self._lock:
            i = min(range(len(self._actors)), key=self._in_hand.__getitem__)
            self._in_hand[i] += 1
            self.peak_in_hand = max(self.peak_in_hand, self._in_hand[i])
        try:
            future = self._actors[i].run.remote(self.app_fn, message, str(partition_id), context)
            _, out_message, updated_context = ray.get(future)
            # the reply's arrays may stay views (the server folds and drops them); the node's state is kept
            owned_arrays(updated_context.state)
            return out_message, updated_context
        finally:
            with self._lock:
                self._in_hand[i] -= 1

    def terminate(self) -> None:
        if self.pool is not None:
            ModelShare.deregister()
            # each actor removes its reply segment's file if the driver never mapped (and so removed) it
            with contextlib.suppress(Exception):
                ray.get([actor.close_reply_slots.remote() for actor in self._actors], timeout=10)
        super().terminate()
        REPLY_VIEWS.close_idle()


def check_backend_api() -> list[str]:
    """What of Flower's backend this module builds on is no longer there (empty when all is)."""
    problems = []
    for name in ("init_ray", "terminate", "process_message", "build"):
        if not callable(getattr(RayBackend, name, None)):
            problems.append(f"RayBackend.{name}")
    if "self.pool = BasicActorPool" not in inspect.getsource(RayBackend.build):
        problems.append("RayBackend.build's BasicActorPool")
    pool_init = inspect.signature(BasicActorPool.__init__).parameters
    problems += [
        f"BasicActorPool({p}=)" for p in ("actor_type", "client_resources", "actor_kwargs") if p not in pool_init
    ]
    run = tuple(inspect.signature(VirtualClientEngineActor.run).parameters)[:5]  # Ray's tracing may add one
    if run != ("self", "client_app_fn", "message", "cid", "context"):
        problems.append(f"VirtualClientEngineActor.run{run}")
    return problems

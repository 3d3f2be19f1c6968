"""Replies from a Ray actor to the driver on the same machine through shared memory, not Ray's object store.

A reply holding a model (6.4 MB for ``mnist-cnn``) goes through Ray's object store: the actor asks the raylet for an
object, copies into it, seals and pins it; the driver gets, maps, releases and frees it. Every step is a message
between processes, and each wakes threads in the actor, the raylet and the driver. At 1,000 simulated clients on 2
cores this costs more CPU than anything else outside the training: measured alone (two actors returning 6.6 MB to
four driver threads), 10.7 ms of CPU per reply through the object store against 3.5 ms through a shared-memory slot
with only a small descriptor going back through Ray.

So each actor keeps one segment of ``SLOTS`` slots in ``/dev/shm``, each the size of its first reply's large arrays.
When a reply's large arrays fit a free slot, the actor copies them there and Ray carries only where they lie; the
driver's ``Array`` then reads them in place (``data`` a read-only ``memoryview`` of the slot) and the slot is free
again once the last view of its arrays is gone (the server folds a reply into its running mean and drops it). Where
no slot is free, a reply is larger than a slot, or the driver is on another machine, the reply goes through the
object store as before: nothing depends on a slot being there.

A segment's file lives only until the driver maps it (the driver removes it then); when the backend terminates, each
actor removes its own if the driver never mapped it (:meth:`ReplySlots.close`).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets
import threading
import weakref
from typing import Any

import numpy as np

#: replies an actor can have waiting in its segment for the driver at once; further ones go through Ray
SLOTS = 8
#: where segments are made (a RAM file system); without it replies go through Ray
SHM_DIR = "/dev/shm"
PREFIX = "fedge-replies-"
_HEADER = mmap.PAGESIZE  # the slots' flags (1: the driver still reads it), then the slots, page-aligned


def _round_up(n: int) -> int:
    return -(-n // mmap.PAGESIZE) * mmap.PAGESIZE


class ReplySlots:
    """Actor side: the segment, and which arrays of the reply being returned go into which slot.

    :meth:`plan` runs just before the actor returns a reply; Ray then pickles the reply and, for each planned
    array, the actor's ``Array`` serializer calls :meth:`place`, which copies the array into the slot and gives the
    state the driver rebuilds it from (:func:`ReplyViews.array_data`)."""

    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled and os.path.isdir(SHM_DIR)
        self.path = ""
        self.slot_bytes = 0
        self._map: mmap.mmap | None = None
        self._plan: dict[int, tuple[Any, int]] = {}  # id(array) -> (array, offset in the slot)
        self._slot = -1
        self._done: set[int] = set()  # ids of the planned arrays already copied into the slot
        self.placed_replies = 0  # replies that went through a slot (for tests)
        self.fallbacks = 0  # replies with large arrays that went through Ray instead

    def _open(self, slot_bytes: int) -> None:
        self.slot_bytes = _round_up(slot_bytes)
        path = os.path.join(SHM_DIR, f"{PREFIX}{os.getpid()}-{secrets.token_hex(4)}")
        size = _HEADER + SLOTS * self.slot_bytes
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        except BaseException:
            os.unlink(path)
            raise
        finally:
            os.close(fd)
        self.path = path

    def plan(self, arrays: list[Any]) -> bool:
        """Reserve a free slot for ``arrays`` (each ``Array`` once; their ``data`` bytes-like) if they fit one.
        Returns whether they will go through the slot."""
        if self._slot >= 0 and not self._done and self._map is not None:
            self._map[self._slot] = 0  # the last plan was never pickled (the task failed after it): free its slot
        self._plan, self._slot, self._done = {}, -1, set()
        unique = list({id(a): a for a in arrays}.values())
        total = sum(len(a.data) for a in unique)
        if not unique or not self.enabled:
            return False
        if self._map is None:
            try:
                self._open(total)
            except OSError:
                self.enabled = False  # no room in /dev/shm: replies go through Ray
                return False
        assert self._map is not None
        slot = next((i for i in range(SLOTS) if self._map[i] == 0), -1) if total <= self.slot_bytes else -1
        if slot < 0:
            self.fallbacks += 1
            return False
        self._map[slot] = 1
        offset = 0
        for a in unique:
            self._plan[id(a)] = (a, offset)
            offset += len(a.data)
        self._slot = slot
        return True

    def place(self, array: Any) -> tuple | None:
        """Copy ``array``'s data into its planned place; the state that says where it lies, or None when
        ``array`` is not planned."""
        planned = self._plan.get(id(array))
        if planned is None or planned[0] is not array:
            return None
        offset = _HEADER + self._slot * self.slot_bytes + planned[1]
        n = len(array.data)
        if id(array) not in self._done:  # pickled twice (no memo): the same place, copied once
            assert self._map is not None
            self._map[offset : offset + n] = array.data
            self._done.add(id(array))
            if len(self._done) == len(self._plan):
                self.placed_replies += 1
        return (self.path, self._slot, offset, n, len(self._plan))

    def close(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            if self.path:
                os.unlink(self.path)


class ReplyViews:
    """Driver side: the actors' segments mapped here, and the arrays read from each slot that are still alive.

    A slot's flag goes back to 0 (free for the actor) once every array the actor placed in it has been read here and
    is gone: each array's data is a read-only view of a small numpy array over the slot, whose finalizer counts it
    out. Never earlier: while any view of a slot lives, the actor does not write there."""

    def __init__(self) -> None:
        self._maps: dict[str, mmap.mmap] = {}
        # (path, slot) -> [arrays the actor placed there, arrays read here, of those still alive]
        self._alive: dict[tuple[str, int], list[int]] = {}
        self._lock = threading.Lock()

    def _segment(self, path: str) -> mmap.mmap:
        seg = self._maps.get(path)
        if seg is None:
            fd = os.open(path, os.O_RDWR)
            try:
                seg = mmap.mmap(fd, os.fstat(fd).st_size)
            finally:
                os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # both sides have it mapped: the name is no longer needed
            self._maps[path] = seg
        return seg

    def array_data(self, state: tuple) -> memoryview:
        """The data of an array placed in a slot (``state`` from :meth:`ReplySlots.place`), read in place."""
        path, slot, offset, nbytes, count = state
        key = (path, slot)
        with self._lock:
            seg = self._segment(path)
            counts = self._alive.setdefault(key, [count, 0, 0])
            counts[1] += 1
            counts[2] += 1
        view = np.frombuffer(seg, dtype=np.uint8, count=nbytes, offset=offset)
        weakref.finalize(view, self._release, seg, key)
        return memoryview(view).toreadonly()

    def _release(self, seg: mmap.mmap, key: tuple[str, int]) -> None:
        """One array of the slot ``key`` is gone: the slot is free once all its arrays have arrived and are gone."""
        with self._lock:
            counts = self._alive[key]
            counts[2] -= 1
            if counts[2] or counts[1] < counts[0]:
                return
            del self._alive[key]
        seg[key[1]] = 0

    def close_idle(self) -> int:
        """Unmap every segment none of whose arrays is still read here; how many. The backend calls it when it
        terminates: its actors are gone, and a later simulation in this process maps its own actors' segments."""
        with self._lock:
            busy = {path for path, _ in self._alive}
            idle = [path for path in self._maps if path not in busy]
            for path in idle:
                with contextlib.suppress(BufferError):  # still exported (a finalizer pending): left to the collector
                    self._maps.pop(path).close()
        return len(idle)

    def in_use(self) -> int:
        """Slots whose arrays are still read here (for tests)."""
        with self._lock:
            return len(self._alive)

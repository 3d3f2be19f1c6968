"""Replies through shared-memory slots (simulations/reply_slots.py), both sides in this process: what the actor
places is what the driver reads, a slot is free again only once every array read from it is gone, and whatever does
not fit a free slot is left to Ray (nothing is lost). The same path through real Ray actors is tested in
test_flower_ray_backend.py."""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest
from flwr.app import Array

from simulations import reply_slots
from simulations.reply_slots import PREFIX, SLOTS, ReplySlots, ReplyViews


@pytest.fixture
def slots(tmp_path, monkeypatch):
    monkeypatch.setattr(reply_slots, "SHM_DIR", str(tmp_path))  # each test its own directory of segments
    made = ReplySlots()
    yield made
    made.close()


def arrays(seed: int, sizes=(70_000, 20_000)) -> list[Array]:
    rng = np.random.default_rng(seed)
    return [Array(rng.standard_normal(n).astype(np.float32)) for n in sizes]


def send(slots: ReplySlots, views: ReplyViews, sent: list[Array]) -> list[memoryview] | None:
    """What a reply's pickling does with ``sent`` on the actor and its unpickling on the driver."""
    if not slots.plan(sent):
        return None
    where = [slots.place(a) for a in sent]
    return [views.array_data(w) for w in {id(a): w for a, w in zip(sent, where, strict=True)}.values()]


def test_what_the_actor_places_the_driver_reads_in_place_and_the_slot_is_free_once_it_is_dropped(slots, tmp_path):
    views = ReplyViews()
    sent = arrays(1)
    got = send(slots, views, sent)
    assert got is not None and [bytes(g) for g in got] == [a.data for a in sent]
    assert all(g.readonly for g in got)
    assert not list(tmp_path.iterdir())  # the driver mapped the segment and removed its name
    assert views.in_use() == 1 and slots._map[0] == 1  # one slot, in use until its arrays are gone
    values = np.frombuffer(got[0], dtype=np.float32)  # a view of the view keeps the slot too
    del got
    gc.collect()
    assert slots._map[0] == 1
    assert np.array_equal(values, np.frombuffer(sent[0].data, dtype=np.float32)[-values.size :])
    assert views.close_idle() == 0  # still read: the segment stays mapped
    del values
    gc.collect()
    assert views.in_use() == 0 and slots._map[0] == 0
    assert slots.placed_replies == 1 and slots.fallbacks == 0
    assert views.close_idle() == 1 and not views._maps


def test_with_every_slot_in_use_a_reply_goes_through_ray_and_a_freed_slot_is_taken_again(slots):
    views = ReplyViews()
    held = [send(slots, views, arrays(seed)) for seed in range(SLOTS)]
    assert all(h is not None for h in held)
    late = arrays(99)
    assert send(slots, views, late) is None  # no slot free: the actor pickles it for Ray's object store
    assert slots.place(late[0]) is None and slots.fallbacks == 1
    del held[3]
    gc.collect()
    again = send(slots, views, late)
    assert again is not None and [bytes(g) for g in again] == [a.data for a in late]
    assert slots._map[3] == 1  # the freed slot, taken again


def test_a_reply_larger_than_a_slot_goes_through_ray(slots):
    views = ReplyViews()
    assert send(slots, views, arrays(1)) is not None  # the first reply sets the slot size
    assert send(slots, views, arrays(2, sizes=(200_000,))) is None
    assert slots.fallbacks == 1


def test_an_array_in_a_reply_twice_is_placed_once_and_its_slot_still_freed(slots):
    views = ReplyViews()
    a, b = arrays(3)
    got = send(slots, views, [a, b, a])
    assert got is not None and len(got) == 2
    del got
    gc.collect()
    assert views.in_use() == 0 and slots._map[0] == 0


def test_a_plan_that_was_never_pickled_gives_its_slot_back(slots):
    assert slots.plan(arrays(4))  # the task failed after planning: Ray never pickled the reply
    assert slots._map[0] == 1
    assert slots.plan(arrays(5))
    assert slots._map[0] == 1 and slots._slot == 0  # the same slot, reserved anew


def test_disabled_slots_make_no_segment(tmp_path, monkeypatch):
    monkeypatch.setattr(reply_slots, "SHM_DIR", str(tmp_path))
    off = ReplySlots(enabled=False)
    assert not off.plan(arrays(6)) and off.place(arrays(6)[0]) is None
    assert not list(tmp_path.iterdir())


def test_a_segment_the_driver_never_mapped_is_removed_when_the_actor_closes(slots, tmp_path):
    assert slots.plan(arrays(7))
    assert [p.name for p in tmp_path.iterdir()] == [f"{PREFIX}{os.getpid()}-{slots.path.rsplit('-', 1)[1]}"]
    slots.close()
    assert not list(tmp_path.iterdir())
    slots.close()  # already gone: no error


def test_a_slot_is_not_freed_before_every_array_placed_in_it_has_arrived_and_gone(slots):
    views = ReplyViews()
    a, b = arrays(8)
    assert slots.plan([a, b])
    first = views.array_data(slots.place(a))
    del first
    gc.collect()
    assert slots._map[0] == 1  # b has not arrived yet: the actor must not write there
    second = views.array_data(slots.place(b))
    twice = views.array_data(slots.place(b))  # the same array pickled twice: the same place, read twice
    assert bytes(second) == b.data == bytes(twice)
    del second
    gc.collect()
    assert slots._map[0] == 1  # one view of b still reads the slot
    del twice
    gc.collect()
    assert slots._map[0] == 0 and views.in_use() == 0

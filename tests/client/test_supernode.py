"""The SuperNode's idle poll (client/supernode.py): short after a message, growing to Flower's 3 s; Flower's module
checked for what the patch builds on. A real SuperNode with it runs in tests/integration/test_deployment.py."""

from __future__ import annotations

import time
import types

import pytest

from client import supernode
from client.node import NodeError, NodeSettings
from client.supernode import FLOWER_IDLE_SLEEP, LOCAL_POLL, PollClock, check_supernode_api, install


def test_idle_waits_start_short_after_a_message_and_grow_to_flowers_3_s():
    slept = []
    clock = PollClock(0.1, sleep=slept.append)
    clock.sleep(3)  # before any message: as Flower
    clock.message_arrived()
    for _ in range(20):
        clock.sleep(3)
    assert slept[0] == 3
    waits = slept[1:]
    assert waits[0] == pytest.approx(0.1) and waits[1] == pytest.approx(0.125)
    assert all(b >= a for a, b in zip(waits, waits[1:], strict=False))  # never shorter while nothing comes
    assert waits[-1] == 3 and max(waits) == 3  # Flower's idle cost once the node has waited long enough
    assert sum(waits[:16]) < 15  # 16 asks within ~14 s of a message, then one per 3 s
    clock.message_arrived()  # the next message: short again
    clock.sleep(3)
    assert slept[-1] == pytest.approx(0.1)


def test_local_waits_are_shorter_and_other_sleeps_and_time_functions_unchanged():
    slept = []
    clock = PollClock(0.2, sleep=slept.append)
    clock.sleep(0.5)
    clock.sleep(7)
    assert slept == [LOCAL_POLL, 7]
    assert clock.monotonic is time.monotonic and clock.time is time.time


@pytest.mark.parametrize("start", [0, -1, 3.5])
def test_a_first_wait_outside_0_to_3_s_is_refused(start):
    with pytest.raises(ValueError, match="first idle poll"):
        PollClock(start)


def test_the_pinned_flowers_supernode_has_what_the_patch_builds_on():
    # fails loudly when a Flower upgrade moves the 3 s sleep, the 0.5 s waits or the pull function
    assert check_supernode_api() == []


def _module_like_flowers(pulled: list) -> types.SimpleNamespace:
    def start_client_internal():
        time.sleep(3)

    def _push_messages():
        time.sleep(0.5)

    def _pull_and_store_message(answer):
        pulled.append(answer)
        return answer

    from flwr.supercore.inflatable import inflatable_utils

    return types.SimpleNamespace(
        time=time,
        pull_objects=inflatable_utils.pull_objects,
        start_client_internal=start_client_internal,
        _push_messages=_push_messages,
        _pull_and_store_message=_pull_and_store_message,
    )


def test_install_resets_the_wait_whenever_flowers_pull_returns_a_message():
    pulled = []
    module = _module_like_flowers(pulled)
    clock = install(0.1, module)
    assert module.time is clock
    clock.next_idle = 2.0
    assert module._pull_and_store_message(None) is None  # nothing came: the wait keeps growing
    assert clock.next_idle == 2.0
    assert module._pull_and_store_message(7) == 7  # a message (its run id): the next wait starts short
    assert clock.next_idle == pytest.approx(0.1)
    assert pulled == [None, 7]  # Flower's own function still did the pulling


def test_a_flower_without_the_3_s_sleep_is_left_alone():
    module = _module_like_flowers([])

    def start_client_internal():  # a Flower that no longer sleeps a constant when idle
        return None

    module.start_client_internal = start_client_internal
    pull = module._pull_and_store_message
    assert check_supernode_api(module) == ["start_client_internal's time.sleep(3)"]
    assert install(0.1, module) is None
    assert module.time is time and module._pull_and_store_message is pull


def test_flowers_object_pulls_ask_again_sooner_and_as_long(monkeypatch):
    from flwr.supercore.inflatable import inflatable_utils

    functions = (inflatable_utils.pull_objects, inflatable_utils.pull_and_inflate_object_from_tree)
    for function in functions:  # restored after the test: the change is process-wide
        monkeypatch.setattr(function, "__kwdefaults__", dict(function.__kwdefaults__))
    assert [f.__kwdefaults__["initial_backoff"] for f in functions] == [1, 1]  # Flower's: 1 s, 2 s, ... up to 10 s
    assert supernode.sooner_object_pulls()
    for function in functions:
        defaults = function.__kwdefaults__
        assert (defaults["initial_backoff"], defaults["backoff_cap"]) == supernode.OBJECT_PULL_BACKOFF
        # at most 1 s a try: 5,000 tries keep about Flower's 500 x 10 s before a missing object fails the message
        assert defaults["max_tries_per_object"] * supernode.OBJECT_PULL_BACKOFF[1] >= 500 * 10 * 0.95


def test_main_refuses_a_bad_first_wait_before_starting_flower(capsys):
    with pytest.raises(SystemExit) as e:
        supernode.main(["--idle-poll-start", "0", "--", "--superlink", "h:1"])
    assert e.value.code == 2
    assert "--idle-poll-start must be in (0, 3]" in capsys.readouterr().err


def _settings(tmp_path, **kw) -> NodeSettings:
    data = tmp_path / "t.csv"
    data.write_text("a,label\n1,0\n")
    return NodeSettings(superlink="h:1", data_path=data, name="n", insecure=True, **kw)


def test_the_node_runs_flowers_supernode_through_the_faster_poll_unless_told_3_s(tmp_path):
    command = _settings(tmp_path).command("/venv/bin/flower-supernode")
    assert command[1:6] == ["-m", "client.supernode", "--idle-poll-start", "0.1", "--"]
    assert command[command.index("--superlink") + 1] == "h:1"
    flower = _settings(tmp_path, idle_poll_start=FLOWER_IDLE_SLEEP).command("/venv/bin/flower-supernode")
    assert flower[0] == "/venv/bin/flower-supernode" and "client.supernode" not in flower
    with pytest.raises(NodeError, match="idle-poll-start"):
        _settings(tmp_path, idle_poll_start=0)

"""``python -m client.supernode [--idle-poll-start S] -- FLOWER_SUPERNODE_ARGS``: Flower's ``flower-supernode``, which
asks the SuperLink for its next message sooner after the last one.

Flower 1.42's SuperNode sleeps 3 s whenever the SuperLink has no message for it (a constant in
``flwr.supernode.start_client_internal``). A node pushes its reply and asks at once for the next message, which the
server sends only once every node has replied and the round's model is aggregated: so the node is asleep when the
message comes, and every train and every evaluate message of a round waits up to 3 s on every node. With that
poll, a deployed round spent 8.1 s in Flower's transport and polling against 1.2 s in our train handler
(``simulations/benchmarks/results/deployment.md``, arrays packed).

Here the node asks again ``--idle-poll-start`` seconds after a message, then 1.25 times longer each time nothing came,
up to Flower's 3 s: right after a message it answers the next one within a quarter of the time it waited, and an
idle node costs the SuperLink what Flower's does (16 requests in the first 14 s, then one every 3 s). Its
local waits (the ClientApp's reply in its own state, a reply's objects in its store) are checked every 0.05 s
instead of 0.5 s, and a message's objects not yet at the SuperLink are asked for again after 0.05 s instead of 1 s
(:func:`sooner_object_pulls`, which the warm ClientApp process applies to its ClientApps too). Everything else is
Flower's own SuperNode, started as ``flower-supernode`` starts it.

Upstream this would be a SuperNode option (a backoff for the idle poll). Until then :func:`install` puts a
:class:`PollClock` where that module reads ``time``, and :func:`check_supernode_api` says what of Flower's module
it builds on is missing; when something is, the node runs Flower's polling unchanged and says so.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from collections.abc import Callable
from typing import Any

#: what Flower's SuperNode sleeps when the SuperLink had no message for it
FLOWER_IDLE_SLEEP = 3
#: what it sleeps between looks at its own state (the ClientApp's reply, a reply's objects)
FLOWER_LOCAL_SLEEP = 0.5
#: the first wait after a message, in seconds (``fedge node --idle-poll-start``)
IDLE_POLL_START = 0.1
#: each wait in which no message came makes the next one this much longer, up to FLOWER_IDLE_SLEEP
IDLE_POLL_GROWTH = 1.25
#: how often it looks at its own state instead of FLOWER_LOCAL_SLEEP
LOCAL_POLL = 0.05
#: a message's object not yet where it is asked for (at the SuperLink for the SuperNode, at the SuperNode for the
#: ClientApp) is asked for again after this many seconds, doubling up to the second value (Flower: 1 s doubling up to
#: 10 s, flwr.supercore.constant.PULL_INITIAL_BACKOFF) ...
OBJECT_PULL_BACKOFF = (0.05, 1.0)
#: ... this many times at most: with waits of at most 1 s, about the 80 minutes Flower's 500 tries of up to 10 s give
OBJECT_PULL_TRIES = 5000


class PollClock:
    """Stands in for the ``time`` module in ``flwr.supernode.start_client_internal``: its idle sleep of 3 s becomes
    a wait that starts at ``start`` after each message and grows by :data:`IDLE_POLL_GROWTH` up to 3 s; its local
    sleeps of 0.5 s become :data:`LOCAL_POLL`. Any other sleep, and everything else of ``time``, is unchanged."""

    def __init__(self, start: float = IDLE_POLL_START, *, sleep: Callable[[float], None] = time.sleep) -> None:
        if not 0 < start <= FLOWER_IDLE_SLEEP:
            raise ValueError(f"the first idle poll must be in (0, {FLOWER_IDLE_SLEEP}] seconds, got {start}")
        self.start = start
        self.next_idle = float(FLOWER_IDLE_SLEEP)  # until a first message: as Flower
        self._sleep = sleep

    def message_arrived(self) -> None:
        """A message came: the next may follow soon, so the next idle wait starts short again."""
        self.next_idle = self.start

    def sleep(self, seconds: float) -> None:
        if seconds == FLOWER_IDLE_SLEEP:
            wait = self.next_idle
            self.next_idle = min(wait * IDLE_POLL_GROWTH, float(FLOWER_IDLE_SLEEP))
        elif seconds == FLOWER_LOCAL_SLEEP:
            wait = LOCAL_POLL
        else:
            wait = seconds
        self._sleep(wait)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def sooner_object_pulls(backoff: tuple[float, float] = OBJECT_PULL_BACKOFF, tries: int = OBJECT_PULL_TRIES) -> bool:
    """Make Flower, in this process (and the processes it forks), ask again for an object of a message that is not
    yet where it asks after ``backoff[0]`` seconds, doubling up to ``backoff[1]``, ``tries`` times at most, instead
    of Flower's 1 s doubling up to 10 s.

    A SuperNode pulls a message as soon as the SuperLink has its header, sometimes before the ServerApp has pushed
    its objects (the model's arrays); SuperExec starts the ClientApp as soon as the SuperNode has the header, before
    the SuperNode holds the objects. Either pull then waits 1 s, then 2 s: most train and evaluate messages of a
    deployed round waited 3 s for objects that came a moment later. The default arguments of Flower's two pull
    functions (``pull_objects``, which the SuperNode calls, and ``pull_and_inflate_object_from_tree``, which the
    ClientApp calls) are changed; False (nothing changed) where they are not the ones this was written against."""
    from flwr.supercore.inflatable import inflatable_utils

    keys = {"initial_backoff", "backoff_cap", "max_tries_per_object"}
    functions = [inflatable_utils.pull_objects, inflatable_utils.pull_and_inflate_object_from_tree]
    if not all(keys <= (f.__kwdefaults__ or {}).keys() for f in functions):
        return False
    for function in functions:
        function.__kwdefaults__.update(initial_backoff=backoff[0], backoff_cap=backoff[1], max_tries_per_object=tries)
    return True


def _flower_module() -> Any:
    from flwr.supernode import start_client_internal

    return start_client_internal


def check_supernode_api(module: Any = None) -> list[str]:
    """What of Flower's SuperNode module this builds on is no longer there (empty when all is)."""
    module = module if module is not None else _flower_module()
    problems = []
    if getattr(module, "time", None) is not time:
        problems.append("start_client_internal.time (the time module)")
    for name, call in (
        ("start_client_internal", f"time.sleep({FLOWER_IDLE_SLEEP})"),
        ("_push_messages", f"time.sleep({FLOWER_LOCAL_SLEEP})"),
    ):
        function = getattr(module, name, None)
        if not callable(function) or call not in inspect.getsource(function):
            problems.append(f"{name}'s {call}")
    if not callable(getattr(module, "_pull_and_store_message", None)):
        problems.append("_pull_and_store_message")
    from flwr.supercore.inflatable import inflatable_utils

    if getattr(module, "pull_objects", None) is not inflatable_utils.pull_objects:
        problems.append("start_client_internal.pull_objects")
    return problems


def install(start: float = IDLE_POLL_START, module: Any = None) -> PollClock | None:
    """Put a :class:`PollClock` in Flower's SuperNode module; None (and Flower's polling unchanged) if the module
    is not what this was written against."""
    module = module if module is not None else _flower_module()
    if check_supernode_api(module):
        return None
    clock = PollClock(start)
    pull = module._pull_and_store_message

    def pull_and_note(*args: Any, **kwargs: Any) -> int | None:
        run_id = pull(*args, **kwargs)
        if run_id is not None:
            clock.message_arrived()
        return run_id

    module._pull_and_store_message = pull_and_note
    module.time = clock
    return clock


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    flower_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    ours = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(prog="python -m client.supernode", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--idle-poll-start",
        type=float,
        default=IDLE_POLL_START,
        help="seconds before the node asks the SuperLink again after a message; each empty answer makes the next "
        f"wait {IDLE_POLL_GROWTH}x longer, up to Flower's {FLOWER_IDLE_SLEEP} s",
    )
    args = parser.parse_args(ours)
    if not 0 < args.idle_poll_start <= FLOWER_IDLE_SLEEP:
        parser.error(f"--idle-poll-start must be in (0, {FLOWER_IDLE_SLEEP}] seconds, got {args.idle_poll_start}")
    problems = check_supernode_api()
    if problems:
        print(
            "fedge: Flower's SuperNode is not the one fedge's faster polling was written for (missing: "
            f"{'; '.join(problems)}); it polls as Flower does (every {FLOWER_IDLE_SLEEP} s when idle)",
            file=sys.stderr,
            flush=True,
        )
    else:
        install(args.idle_poll_start)
        sooner_object_pulls()
        print(
            f"fedge: this SuperNode asks for its next message {args.idle_poll_start:g} s after the last one, "
            f"{IDLE_POLL_GROWTH}x longer each time none came, up to {FLOWER_IDLE_SLEEP} s",
            file=sys.stderr,
            flush=True,
        )
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *flower_args]
    flower_supernode()


if __name__ == "__main__":
    main()

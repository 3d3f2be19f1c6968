"""Warm ClientApp processes on a real node: still one process per message, without its imports each time.

Flower 1.42's SuperNode, in either isolation mode, runs every message in a new ``flwr-clientapp`` process, which
SuperExec starts by name from PATH (``flwr.supercore.constant.TASK_TYPE_TO_COMMAND``); the long-lived processes
(SuperNode, SuperExec) never run app code, and ``--isolation process`` only moves SuperExec out of the SuperNode.
A fresh process spends seconds importing torch, Opacus and Flower before our handler runs, on every message.

``fedge node`` therefore starts one warm process (:func:`serve`) that imports them once. For each message it
forks a child that runs Flower's own ``flwr-clientapp`` entry point with the arguments, environment, working
directory and standard streams SuperExec gave. Every message still runs in a process of its own, forked from the
same pristine state: nothing of one message's work reaches the next except what Flower's context and the node's
state file carry (the accountant), and the token, the Runtime API connection, TLS and the SuperNode's
authentication are Flower's, untouched.

The children also ask for their message's objects sooner (:func:`sooner_object_pulls`): SuperExec starts a
ClientApp as soon as the SuperNode has a message's header, while the SuperNode is still fetching the message's
objects (the model's arrays) from the SuperLink, and Flower's ClientApp asks again for an object not there yet after
1 s, then 2 s: on a loaded node most train and evaluate messages waited 3 s for objects that came a moment later.

SuperExec reaches the warm process through a small ``flwr-clientapp`` launcher that ``fedge node`` puts first on
its PATH (:func:`write_launcher`): it hands over its arguments and streams on a private Unix socket (a directory
only this user can enter) and exits with the child's exit code. When the warm process is not there (still
importing, or gone), the launcher runs Flower's ``flwr-clientapp`` itself, as before.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import selectors
import shutil
import signal
import socket
import struct
import sys
import traceback
from pathlib import Path

from client.supernode import sooner_object_pulls

# Flower's `flwr-clientapp` console script (flwr's entry points) and what its process imports before our handler;
# a "module:function" entry is imported, then called once (what torch only imports on first use).
FLOWER_ENTRY = "flwr.supernode.cli:flwr_clientapp"
PRELOAD = ("flwr.supernode.cli", "client.client_app", "client.privacy", "client.warm_clientapp:first_optimizer")
LAUNCHER_NAME = "flwr-clientapp"
MAX_REQUEST_BYTES = 1 << 20
_HEADER = struct.Struct("!I")

LAUNCHER = """#!{python} -IS
# fedge node's flwr-clientapp: run this message's ClientApp in a child forked from the node's warm process
# (client/warm_clientapp.py); Flower's own flwr-clientapp when that process is not there.
import json, os, signal, socket, struct, sys

SOCKET = {socket!r}
FLOWER = {flower!r}


def flowers_own():
    os.execv(FLOWER, [FLOWER, *sys.argv[1:]])


try:
    warm = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    warm.connect(SOCKET)
except OSError:
    flowers_own()
body = json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}}).encode()
try:
    socket.send_fds(warm, [struct.pack("!I", len(body)) + body], [0, 1, 2])
    replies = warm.makefile("rb")
    started = replies.readline()
except OSError:
    started = b""
if not started:  # the warm process went away before forking: nothing ran yet
    flowers_own()
pid = json.loads(started)["pid"]


def forward(signum, frame):
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, forward)
ended = replies.readline()
sys.exit(json.loads(ended)["exit"] if ended else 1)
"""


def write_launcher(directory: Path, *, socket_path: Path, flower_clientapp: str) -> Path:
    """Write the ``flwr-clientapp`` launcher into ``directory`` (to go first on SuperExec's PATH)."""
    directory.mkdir(parents=True, exist_ok=True)
    launcher = directory / LAUNCHER_NAME
    launcher.write_text(
        LAUNCHER.format(python=sys.executable, socket=str(socket_path), flower=flower_clientapp), encoding="utf-8"
    )
    launcher.chmod(0o700)
    return launcher


def first_optimizer() -> None:
    """Build one torch optimizer, as every train message does: the first in a process imports ``torch._dynamo``
    (about 190 modules, 0.9-1.4 s of CPU on 2 cores), which each forked child would otherwise import again. It runs
    no tensor operation and starts no thread, so forking stays as safe as before."""
    import torch

    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)


def _load(reference: str) -> object:
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    """One request: a length-prefixed JSON body (argv, cwd, env) with the caller's stdin, stdout, stderr."""
    data, fds, _flags, _address = socket.recv_fds(conn, 65536, 3)
    if len(data) < _HEADER.size:
        raise ValueError("short request")
    (length,) = _HEADER.unpack_from(data)
    if length > MAX_REQUEST_BYTES:
        raise ValueError(f"request of {length} bytes")
    body = bytearray(data[_HEADER.size :])
    while len(body) < length:
        chunk = conn.recv(min(65536, length - len(body)))
        if not chunk:
            raise ValueError("truncated request")
        body += chunk
    request = json.loads(body)
    if len(fds) != 3:
        raise ValueError("a request carries the caller's stdin, stdout and stderr")
    return request, fds


def _run_child(entry: object, request: dict, fds: list[int], close: list[int]) -> None:
    """In the forked child: become the caller's ``flwr-clientapp`` process, run Flower's entry point, exit."""
    code = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the warm process's own handler is not the child's
        for fd in close:
            os.close(fd)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = [LAUNCHER_NAME, *request["argv"]]
        try:
            entry()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - the child must reach os._exit whatever happened
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def serve(
    socket_path: Path,
    *,
    entry: str = FLOWER_ENTRY,
    preload: tuple[str, ...] = PRELOAD,
    remove_on_exit: Path | None = None,
) -> None:
    """Import ``preload`` once (calling its ``module:function`` entries), then fork one child per request on
    ``socket_path`` to run ``entry``.

    Serves until the process that started it is gone (checked every second) or the process is terminated; then
    removes ``remove_on_exit`` (the node's private directory: a node killed outright cannot remove it itself).
    """
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(0))
    try:
        _serve(socket_path, entry=entry, preload=preload)
    finally:
        if remove_on_exit is not None:
            shutil.rmtree(remove_on_exit, ignore_errors=True)


def _serve(socket_path: Path, *, entry: str, preload: tuple[str, ...]) -> None:
    for name in preload:
        if ":" in name:
            _load(name)()
        else:
            importlib.import_module(name)
    if "flwr.supernode.runtime.run_clientapp" in sys.modules and not sooner_object_pulls():
        print(
            "fedge warm ClientApp: Flower's ClientApp no longer pulls its message as fedge expects; its objects are "
            "asked for as Flower does (1 s, then 2 s, ... when not there yet)",
            file=sys.stderr,
            flush=True,
        )
    function = _load(entry)
    parent = os.getppid()
    socket_path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(socket_path))
    listener.listen(64)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, None)
    children: dict[int, tuple[int, socket.socket]] = {}  # pidfd -> (pid, the caller's connection)
    while os.getppid() == parent:
        for key, _events in selector.select(timeout=1.0):
            if key.data is None:
                conn, _ = listener.accept()
                try:
                    request, fds = _receive(conn)
                except (OSError, ValueError, json.JSONDecodeError) as e:
                    print(f"fedge warm ClientApp: refused a request: {e}", file=sys.stderr, flush=True)
                    conn.close()
                    continue
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    inherited = [listener.fileno(), selector.fileno(), conn.fileno()]
                    inherited += [fd for fd in children] + [c.fileno() for _, c in children.values()]
                    _run_child(function, request, fds, inherited)
                for fd in fds:
                    os.close(fd)
                pidfd = os.pidfd_open(pid)
                children[pidfd] = (pid, conn)
                selector.register(pidfd, selectors.EVENT_READ, "child")
                try:
                    conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
                except OSError:
                    pass  # the launcher is gone; the child runs on and is reaped below
            else:
                pid, conn = children.pop(key.fd)
                selector.unregister(key.fd)
                os.close(key.fd)
                _, status = os.waitpid(pid, 0)
                code = os.waitstatus_to_exitcode(status)  # -N: killed by signal N, which a shell reports as 128+N
                try:
                    conn.sendall(json.dumps({"exit": code if code >= 0 else 128 - code}).encode() + b"\n")
                except OSError:
                    pass
                conn.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="fedge node's warm ClientApp process (started by fedge node)")
    parser.add_argument("--socket", type=Path, required=True)
    parser.add_argument("--entry", default=FLOWER_ENTRY)
    parser.add_argument(
        "--preload",
        default=",".join(PRELOAD),
        help="comma-separated modules to import once, and module:function entries to call once after importing",
    )
    parser.add_argument("--remove-on-exit", type=Path, default=None, help="a directory to remove when serving ends")
    args = parser.parse_args(argv)
    preload = tuple(m for m in args.preload.split(",") if m)
    serve(args.socket, entry=args.entry, preload=preload, remove_on_exit=args.remove_on_exit)


if __name__ == "__main__":
    main()

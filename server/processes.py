"""Start and stop Flower's long-running processes, with every child they leave behind.

A SuperLink starts a ``flower-superexec`` in a session of its own, a SuperNode starts one in its own group, and each
of those starts a ``flwr-serverapp`` / ``flwr-clientapp`` per run or message. Stopping only the process we started
leaves the rest running, so :func:`stop_tree` collects the whole tree first (from ``/proc`` on Linux) and then
stops every member: politely (SIGTERM), then for sure (SIGKILL).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses, so split after the last ')'
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first found, grandchildren after); empty where /proc is missing."""
    if not Path("/proc").is_dir():
        return []
    children = _children_map()
    found: list[int] = []
    stack = list(children.get(pid, []))
    while stack:
        child = stack.pop()
        found.append(child)
        stack.extend(children.get(child, []))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state != "Z"  # a zombie has exited; only its parent's wait() is missing


def signal_all(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _group(pid: int) -> list[int]:
    """Every process in the process group led by ``pid`` (orphans too: a dead parent's children keep its group)."""
    members = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2]) == pid:
                    members.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return members


def stop_tree(proc: subprocess.Popen | int, *, grace: float = 5.0, kill: bool = False) -> None:
    """Stop ``proc``, every process below it and, if it leads a process group (``start_new_session``), every
    process left in that group; SIGKILL at once with ``kill``, else after ``grace`` seconds."""
    pid = proc if isinstance(proc, int) else proc.pid
    tree = list(dict.fromkeys([pid, *descendants(pid), *_group(pid)]))
    if not kill:
        signal_all(tree, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(p) for p in tree):
            time.sleep(0.1)
        tree = [*tree, *(p for q in tree if _alive(q) for p in descendants(q))]
    signal_all(tree, signal.SIGKILL)
    if isinstance(proc, subprocess.Popen):
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    for p in tree:  # reap the children that are ours; others are reaped by their parents or init
        try:
            os.waitpid(p, os.WNOHANG)
        except ChildProcessError:
            pass


def run_in_foreground(command: list[str], env: dict[str, str], *, tail_lines: int = 50) -> tuple[int, str]:
    """Run a long-lived Flower process (``flower-supernode``) until it exits, passing its log through to stdout;
    (its exit code, the last ``tail_lines`` lines of its log). Whatever it started is stopped with it."""
    proc = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,  # its group holds the flower-superexec it starts, even once orphaned
    )
    tail: list[str] = []

    def relay() -> None:  # Flower's log, passed through; its exit codes are only in the text
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            tail[:] = [*tail[-(tail_lines - 1) :], line]

    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    try:
        code = proc.wait()
    finally:
        stop_tree(proc, kill=True)  # the flower-superexec child outlives the SuperNode
        reader.join(timeout=5)
    return code, "".join(tail)

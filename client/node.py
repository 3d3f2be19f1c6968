"""A real node: ``flower-supernode`` with this node's facts in its ``node_config``.

The node config carries what only the node knows: where its data is (``data-path``), which device to train on
(``device``: auto picks CUDA when present), its name in the server's ledger (``node-name``) and where its privacy
state survives restarts (``state-dir``, see ``client/state_file.py``). The run's settings come from the server.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from client.errors import ClientError
from client.supernode import FLOWER_IDLE_SLEEP, IDLE_POLL_START

# flower-supernode's exit codes (flwr.common.exit.ExitCode) that mean the SuperLink said no.
REFUSED_EXIT_CODES = {305: "the SuperLink refused the connection or could not be reached"}
AUTH_KEY_EXIT_CODE = 302
# A node restarted right after a crash is refused until its old session on the SuperLink expires (about a minute).
REJOIN_WAIT_SECONDS = 20.0
# SuperExec asks the SuperNode for a new message to run every second by default (Flower's public setting, an
# environment variable); a message then waits half a second on average before its ClientApp starts. Every half
# second halves that. Each poll is a local HTTP request that costs SuperExec and the SuperNode CPU: polls every
# 0.1 s took CPU that the nodes' training and transfers needed on 2 cores (deployment benchmark's notes).
SUPEREXEC_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"
SUPEREXEC_POLL_SECONDS = "0.5"


class NodeError(ClientError):
    """A node that cannot start: its data, its key, or the SuperLink's answer."""


@dataclass(frozen=True, kw_only=True)
class NodeSettings:
    superlink: str
    data_path: Path
    name: str
    device: str = "auto"
    state_dir: Path | None = None
    ca_certificate: Path | None = None
    auth_key: Path | None = None
    insecure: bool = False
    runtime_port: int = 9094
    max_wait_time: float | None = None
    idle_poll_start: float = IDLE_POLL_START

    def __post_init__(self) -> None:
        if not self.data_path.is_file():
            raise NodeError(f"this node's data file {self.data_path} does not exist; pass --data with its CSV file")
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", self.name):
            raise NodeError(f"node name {self.name!r}: use letters, digits, '.', '_' and '-' only")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise NodeError(f"device {self.device!r}: use auto, cpu or cuda")
        if not self.insecure and (self.ca_certificate is None or not self.ca_certificate.is_file()):
            raise NodeError(
                "a TLS connection needs the federation's CA certificate (--ca, from `fedge certs`); "
                "pass --insecure only on a trusted test network"
            )
        if self.auth_key is not None and not self.auth_key.is_file():
            raise NodeError(f"private key {self.auth_key} does not exist; make one with `fedge node-keys`")
        if not 0 < self.idle_poll_start <= FLOWER_IDLE_SLEEP:
            raise NodeError(
                f"--idle-poll-start {self.idle_poll_start:g}: give seconds in (0, {FLOWER_IDLE_SLEEP}] "
                f"({FLOWER_IDLE_SLEEP} polls as Flower does)"
            )

    def node_config(self) -> str:
        values: dict[str, str] = {"data-path": str(self.data_path.resolve()), "device": self.device}
        values["node-name"] = self.name
        if self.state_dir is not None:
            values["state-dir"] = str(self.state_dir.resolve())
        return " ".join(f"{key}={json.dumps(value)}" for key, value in values.items())

    def command(self, executable: str) -> list[str]:
        """The SuperNode's command line: Flower's ``executable`` (``flower-supernode``), or, unless
        ``idle_poll_start`` is Flower's own 3 s, the same SuperNode through :mod:`client.supernode`, which asks the
        SuperLink for the next message sooner after the last one."""
        cmd = [executable]
        if self.idle_poll_start < FLOWER_IDLE_SLEEP:
            cmd = [sys.executable, "-m", "client.supernode", "--idle-poll-start", f"{self.idle_poll_start:g}", "--"]
        cmd += ["--superlink", self.superlink, "--node-config", self.node_config()]
        cmd += ["--port", str(self.runtime_port)]
        if self.insecure:
            cmd.append("--insecure")
        else:
            cmd += ["--root-certificates", str(self.ca_certificate.absolute())]
        if self.auth_key is not None:
            cmd += ["--auth-supernode-private-key", str(self.auth_key.absolute())]
        if self.max_wait_time is not None:
            cmd += ["--max-wait-time", str(self.max_wait_time)]
        return cmd


def flower_exit_code(log: str, *, default: int) -> int:
    """The Flower exit code a SuperNode printed (``Exit Code: 305``); the process itself exits with 1."""
    found = re.findall(r"Exit Code: (\d+)", log)
    return int(found[-1]) if found else default


def explain_exit(code: int, settings: NodeSettings) -> str:
    """What a SuperNode's exit code means for the person running the node, and what to do."""
    if code == AUTH_KEY_EXIT_CODE:
        return f"flower-supernode could not read the private key {settings.auth_key}; make one with `fedge node-keys`"
    if code in REFUSED_EXIT_CODES:
        return (
            f"{REFUSED_EXIT_CODES[code]} at {settings.superlink}. If the SuperLink is up, this node's public key is "
            "not on its allow-list: ask the server's operator to add it (`fedge server --allow NODE.pub`). A node "
            "restarted right after a crash is also refused until its old session expires: try again in a minute"
        )
    return f"flower-supernode exited with code {code}; rerun with --verbose to see Flower's log"


def join_federation(
    settings: NodeSettings,
    command: list[str],
    run: Callable[[list[str]], tuple[int, str]],
    *,
    join_attempts: int = 4,
    wait_seconds: float = REJOIN_WAIT_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
    say: Callable[[str], None] = lambda text: print(text, file=sys.stderr),
) -> None:
    """Run the node's SuperNode (``run(command)`` -> exit code and the end of its log) until it ends.

    When the SuperLink refuses the node, try again after ``wait_seconds``, ``join_attempts`` tries in all: a node
    restarted right after a crash is refused until its old session expires. Any other end is final; one that is
    not a clean exit raises :class:`NodeError` saying what it means and what to do.
    """
    attempts = max(1, join_attempts)
    for attempt in range(1, attempts + 1):
        code, log = run(command)
        flower_code = flower_exit_code(log, default=code)
        if flower_code not in REFUSED_EXIT_CODES or attempt == attempts:
            break
        say(f"the SuperLink refused this node (attempt {attempt} of {attempts}); retrying in {wait_seconds:g} s")
        sleep(wait_seconds)
    if code:
        raise NodeError(explain_exit(flower_code, settings))


@contextmanager
def node_environment(env: dict[str, str], *, flower_clientapp: str, warm: bool = True) -> Iterator[dict[str, str]]:
    """The environment for this node's ``flower-supernode``, with what makes its messages start sooner.

    SuperExec polls for messages every :data:`SUPEREXEC_POLL_SECONDS` (unless ``env`` sets it). With ``warm``, a
    warm ClientApp process (``client/warm_clientapp.py``) runs for as long as the block does: it imports torch,
    Opacus and Flower once and forks each message's ``flwr-clientapp`` process from there, reached through a
    launcher first on PATH in a private directory (removed afterwards). ``flower_clientapp`` is Flower's own
    ``flwr-clientapp``, which the launcher runs whenever the warm process is not there.
    """
    env = dict(env)
    env.setdefault(SUPEREXEC_POLL_ENV, SUPEREXEC_POLL_SECONDS)
    if not warm:
        yield env
        return
    from client.warm_clientapp import write_launcher

    private = Path(tempfile.mkdtemp(prefix="fedge-node-"))  # mode 0700: only this user reaches the socket
    socket_path = private / "warm.sock"
    bin_dir = write_launcher(private / "bin", socket_path=socket_path, flower_clientapp=flower_clientapp).parent
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
    warm_process = subprocess.Popen(
        [sys.executable, "-m", "client.warm_clientapp", "--socket", str(socket_path), "--remove-on-exit", str(private)],
        env=env,
        start_new_session=True,  # the node stops it; a Ctrl-C meant for the node does not print its traceback
    )
    try:
        yield env
    finally:
        warm_process.terminate()
        try:
            warm_process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            warm_process.kill()
            warm_process.wait()
        shutil.rmtree(private, ignore_errors=True)

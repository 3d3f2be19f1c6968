"""Flower's Deployment Engine around fedge's apps: the SuperLink, the allow-list of nodes, and submitting a run.

Flower 1.42 serves the Fleet, Control and Runtime APIs of a SuperLink on one HTTPS port. ``fedge server`` starts
``flower-superlink`` with its state in a database on disk (so a restarted SuperLink remembers its registered nodes),
TLS from the given certificates, and SuperNode authentication on: only nodes whose public key is registered
(``flwr supernode register``) may connect. The SuperLink, and so every ServerApp it starts, works in the directory
``fedge server`` was started from: relative server-side paths in a run config (``data-path``, ``runs-dir``) are
taken from there, on the server, never from the machine that submits the run.

``fedge run`` writes the Flower App for its run (``server/flower_app.py``: fedge's installed ServerApp and ClientApp
plus the run config) into a temporary directory and drives Flower's public CLI, through a Flower configuration
(``FLWR_HOME/config.toml``) that names the SuperLink and the CA to trust: ``flwr run`` submits it, ``flwr log
--stream`` follows it, ``flwr list --run-id`` says how it ended. Flower's own programs are taken from the
environment fedge runs in (next to its Python) before PATH. Flower's runtime dependency installation stays off
everywhere: it would install a CUDA torch per run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.errors import ServerError

CONNECTION = "fedge"
DEFAULT_PORT = 9092


class DeploymentError(ServerError):
    """A SuperLink that cannot start, a node that cannot be registered, a run that cannot be submitted."""


class RunFailedError(DeploymentError):
    """A run the SuperLink accepted that did not complete (its ServerApp failed, or it was stopped)."""


def environment_bin() -> Path:
    """Where this Python's environment keeps its console scripts (flwr, flower-superlink, ...)."""
    return Path(sys.executable).parent


def flower_env(flwr_home: Path | None = None) -> dict[str, str]:
    """The environment for a Flower process: runtime dependency installation off, and this Python's environment
    first on PATH, so that the programs Flower itself starts (``flower-superexec``, ``flwr-serverapp``,
    ``flwr-clientapp``) are this environment's even when it was never activated."""
    env = dict(os.environ)
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env["PATH"] = os.pathsep.join([str(environment_bin()), *[p for p in env.get("PATH", "").split(os.pathsep) if p]])
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    return env


def flower_executable(name: str) -> str:
    """A Flower console script from this environment (next to this Python), else from PATH."""
    here = environment_bin() / name
    if here.is_file():
        return str(here)
    found = shutil.which(name)
    if found is None:
        raise DeploymentError(
            f"{name} is not installed in this environment ({environment_bin()}): "
            'pip install "fedge[train]" (it brings flwr 1.42)'
        )
    return found


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise DeploymentError(f"address {address!r} is not HOST:PORT (for example 127.0.0.1:{DEFAULT_PORT})")
    return host.strip("[]") or "127.0.0.1", int(port)


def wait_for_port(address: str, *, timeout: float, process: subprocess.Popen | None = None) -> None:
    """Wait until something accepts TCP connections at ``address``; fail early if ``process`` dies."""
    host, port = split_address(address)
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise DeploymentError(f"the process serving {address} exited with code {process.returncode}")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise DeploymentError(f"nothing answered at {address} within {timeout:.0f}s")


def absolute(path: Path | str) -> Path:
    """``path`` made absolute from the current directory, before it reaches a process that works elsewhere."""
    return Path(path).expanduser().absolute()


@dataclass(frozen=True, kw_only=True)
class SuperLinkSettings:
    """How ``fedge server`` starts the SuperLink. The certificates are None only with ``insecure``.

    Every path is made absolute from the current directory when the settings are made: the SuperLink is handed only
    absolute paths. ``work_dir`` (default: the current directory) is where the SuperLink and its ServerApps work,
    so where the relative ``data-path`` and ``runs-dir`` of a run are taken from.
    """

    state_dir: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    ca_certificate: Path | None = None
    server_certificate: Path | None = None
    server_key: Path | None = None
    insecure: bool = False
    authenticate_nodes: bool = True
    work_dir: Path = field(default_factory=Path.cwd)
    extra_args: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        for name in ("state_dir", "work_dir", "ca_certificate", "server_certificate", "server_key"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, absolute(value))
        tls = (self.ca_certificate, self.server_certificate, self.server_key)
        if self.insecure:
            return
        missing = [str(p) for p in tls if p is None or not Path(p).is_file()]
        if missing:
            raise DeploymentError(
                "TLS needs the CA certificate, the server certificate and its key (make them with `fedge certs`); "
                f"missing: {', '.join(missing)}. Pass --insecure only on a trusted test network"
            )

    @property
    def address(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"{host}:{self.port}"

    @property
    def database(self) -> Path:
        return self.state_dir / "superlink.db"

    @property
    def flwr_home(self) -> Path:
        return self.state_dir / "flwr-home"

    def command(self) -> list[str]:
        cmd = [
            flower_executable("flower-superlink"),
            "--database",
            str(self.database),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--disable-runtime-dependency-installation",
        ]
        if self.insecure:
            cmd.append("--insecure")
        else:
            cmd += [
                "--ssl-ca-certfile",
                str(self.ca_certificate),
                "--ssl-certfile",
                str(self.server_certificate),
                "--ssl-keyfile",
                str(self.server_key),
            ]
        if self.authenticate_nodes:
            cmd.append("--enable-supernode-auth")
        return cmd + list(self.extra_args)


def write_connection(flwr_home: Path, address: str, *, ca_certificate: Path | None, insecure: bool = False) -> Path:
    """A Flower configuration with one SuperLink connection, ``fedge``, as the default."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]", f'address = "{address}"']
    if insecure:
        lines.append("insecure = true")
    elif ca_certificate is not None:
        lines.append(f"root-certificates = {json.dumps(str(Path(ca_certificate).resolve()))}")
    path = flwr_home / "config.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _start_flower_process(cmd: list[str], cwd: Path, flwr_home: Path, log_file: Path | None) -> subprocess.Popen:
    """Start a Flower command in its own process group (so it and its children can be stopped together), with
    stdout and stderr appended to ``log_file`` when one is given."""
    out = open(absolute(log_file), "ab") if log_file is not None else None  # noqa: SIM115 (the child keeps it)
    try:
        return subprocess.Popen(
            cmd,
            cwd=cwd,
            env=flower_env(flwr_home),
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            start_new_session=True,
        )
    finally:
        if out is not None:
            out.close()


def start_superlink(
    settings: SuperLinkSettings, *, log_file: Path | None = None, timeout: float = 60
) -> subprocess.Popen:
    """Start ``flower-superlink`` and wait until it listens; its Flower configuration is written alongside."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    write_connection(
        settings.flwr_home, settings.address, ca_certificate=settings.ca_certificate, insecure=settings.insecure
    )
    proc = _start_flower_process(settings.command(), settings.work_dir, settings.flwr_home, log_file)
    try:
        wait_for_port(settings.address, timeout=timeout, process=proc)
    except BaseException:
        from server.processes import stop_tree

        stop_tree(proc, kill=True)  # a SuperLink that never listened is not left behind
        raise
    return proc


def _register_command(public_key: Path) -> list[str]:
    return [flower_executable("flwr"), "supernode", "register", str(public_key), CONNECTION, "--format", "json"]


def _registration_result(public_key: Path, stdout: str, stderr: str) -> str:
    text = stdout + stderr
    try:
        reply = json.loads(stdout[stdout.index("{") :])
    except ValueError:
        reply = {}
    if reply.get("success"):
        return str(reply.get("node-id", ""))
    if "already" in text.lower():
        return ""
    raise DeploymentError(f"could not register {public_key} with the SuperLink: {text.strip()[-500:]}")


def register_node(flwr_home: Path, public_key: Path, *, timeout: float = 60) -> str:
    """Put one node's public key on the SuperLink's allow-list; the node id Flower gave it.

    A key that is already registered (a restarted SuperLink keeps its list in its database) is not an error.
    """
    result = subprocess.run(
        _register_command(public_key), env=flower_env(flwr_home), capture_output=True, text=True, timeout=timeout
    )
    return _registration_result(public_key, result.stdout or "", result.stderr or "")


def _database_identity(database: Path) -> str:
    stat = database.stat()
    return f"{stat.st_dev}:{stat.st_ino}"


def register_nodes(settings: SuperLinkSettings, public_keys: list[Path], *, timeout: float = 120) -> dict[Path, str]:
    """Register every key on the allow-list at once (one ``flwr`` process each, in parallel); the node ids.

    Keys this SuperLink's database already holds (listed in ``allow-list.json`` beside it) are not sent again: each
    ``flwr`` call costs seconds, and a restarted server would pay them all on every start.
    """
    record_path = settings.state_dir / "allow-list.json"
    identity = _database_identity(settings.database) if settings.database.exists() else ""
    try:
        record = json.loads(record_path.read_text())
        known: dict[str, str] = record["keys"] if record.get("database") == identity else {}
    except (OSError, ValueError, KeyError):
        known = {}
    results: dict[Path, str] = {}
    pending: dict[Path, subprocess.Popen] = {}
    for key in public_keys:
        fingerprint = key.read_text().split()[1] if len(key.read_text().split()) > 1 else key.read_text()
        if fingerprint in known:
            results[key] = known[fingerprint]
            continue
        pending[key] = subprocess.Popen(
            _register_command(key),
            env=flower_env(settings.flwr_home),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    for key, proc in pending.items():
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for other in pending.values():  # every pending registration, not just this one
                if other.poll() is None:
                    other.kill()
                other.wait()
            raise DeploymentError(f"registering {key} with the SuperLink took over {timeout:.0f}s") from None
        node_id = _registration_result(key, stdout or "", stderr or "")
        results[key] = node_id or "registered before"
        known[key.read_text().split()[1]] = results[key]
    if pending and settings.database.exists():
        record_path.write_text(json.dumps({"database": _database_identity(settings.database), "keys": known}))
    return results


@dataclass(frozen=True, kw_only=True)
class Connection:
    """How the submitting machine reaches the SuperLink: its address and the CA to trust (or ``insecure``)."""

    superlink: str
    ca_certificate: Path | None = None
    insecure: bool = False

    def __post_init__(self) -> None:
        split_address(self.superlink)
        if self.ca_certificate is not None:
            object.__setattr__(self, "ca_certificate", absolute(self.ca_certificate))
        if not self.insecure and (self.ca_certificate is None or not self.ca_certificate.is_file()):
            raise DeploymentError(
                "a TLS connection needs the federation's CA certificate (--ca, the ca.crt from `fedge certs`)"
                + (f"; {self.ca_certificate} does not exist" if self.ca_certificate is not None else "")
                + "; pass --insecure only on a trusted test network"
            )


@dataclass(frozen=True, kw_only=True)
class RunOutcome:
    """How a submitted run ended, as the SuperLink reports it."""

    flower_run_id: int
    status: str  # Flower's "finished:completed", "finished:failed", "finished:stopped"
    details: str
    run_record: str | None  # where the ServerApp wrote its result (the run record; an acceptance report): on the server

    @property
    def completed(self) -> bool:
        return self.status.endswith(":completed")


# The ServerApp's last line names its run record (server/server_app.py); a path on the server.
RUN_RECORD_LINE = re.compile(r"run record in (\S.*?)\s*$")
# Data sets a run reads from its data-path, on the server (its evaluation set) as on the nodes.
DATA_SETS_READ_FROM_A_PATH = ("mnist", "csv")


def check_server_data(run_config: dict[str, Any], *, experiment: str = "", description: str = "") -> None:
    """Before anything starts: a run whose data set is read from a file needs ``data-path``, a path on the server.

    The message names what the server must have (from the experiment's description) and how to point at it.
    """
    dataset = str(run_config.get("dataset", ""))
    if dataset not in DATA_SETS_READ_FROM_A_PATH or str(run_config.get("data-path", "")).strip():
        return
    what = f"experiment {experiment!r}" if experiment else "this run"
    about = f" ({description})" if description else ""
    raise DeploymentError(
        f"{what} reads its {dataset} data from a file the server must have, and no data-path names it{about}: "
        "pass --set data-path=PATH, that file's path on the server (a relative path is taken from the directory "
        "`fedge server` was started in)"
    )


def _flwr(args: list[str], flwr_home: Path, *, timeout: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            [flower_executable("flwr"), *args],
            env=flower_env(flwr_home),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise DeploymentError(f"`flwr {' '.join(args[:2])}` got no answer within {timeout:.0f}s") from None


def _json_reply(result: subprocess.CompletedProcess, what: str) -> dict[str, Any]:
    """The JSON object a ``flwr ... --format json`` call printed; its error message as a DeploymentError."""
    text = result.stdout or ""
    try:
        reply = json.loads(text[text.index("{") :])
    except ValueError:
        reply = {}
    if not reply.get("success", False):
        reason = reply.get("error-message") or (text + (result.stderr or "")).strip()[-800:]
        raise DeploymentError(f"{what} failed: {reason}")
    return reply


def submit_app(app_dir: Path, flwr_home: Path, *, timeout: float = 300) -> int:
    """``flwr run APP fedge``: build the app into a FAB, submit it; Flower's id of the new run."""
    reply = _json_reply(
        _flwr(["run", str(app_dir), CONNECTION, "--format", "json"], flwr_home, timeout=timeout),
        "submitting the run (flwr run)",
    )
    return int(reply["run-id"])


def run_status(flower_run_id: int, flwr_home: Path, *, timeout: float = 60) -> tuple[str, str]:
    """``flwr list --run-id N``: the run's status (``finished:failed``, ...) and Flower's details."""
    reply = _json_reply(
        _flwr(["list", CONNECTION, "--run-id", str(flower_run_id), "--format", "json"], flwr_home, timeout=timeout),
        f"asking the SuperLink about run {flower_run_id} (flwr list)",
    )
    run = reply["runs"][0]
    return str(run["status"]), str(run.get("status-details", ""))


def follow_logs(flower_run_id: int, flwr_home: Path, on_line: Callable[[str], None]) -> int:
    """``flwr log N --stream``: every line of the run's log to ``on_line`` until the run ends; flwr's exit code."""
    from server.processes import stop_tree

    proc = subprocess.Popen(
        [flower_executable("flwr"), "log", str(flower_run_id), CONNECTION, "--stream"],
        env=flower_env(flwr_home),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    try:
        for line in proc.stdout:
            on_line(line)
        return proc.wait()
    finally:
        if proc.poll() is None:
            stop_tree(proc)


def _late_run_record(
    flower_run_id: int, flwr_home: Path, seen: list[str], *, wait: float = 15, result_line: re.Pattern = RUN_RECORD_LINE
) -> tuple[str | None, str]:
    """The run-record line a finished run's ServerApp wrote last, and the log lines the stream had not shown yet.

    Flower ends the log stream when the run's status turns finished, and the ServerApp uploads its last lines as it
    exits, so the stream can end before them: ask for the whole log (``flwr log --show``) until they are in.
    """
    deadline = time.monotonic() + wait
    while True:
        result = _flwr(["log", str(flower_run_id), CONNECTION, "--show"], flwr_home, timeout=60)
        lines = (result.stdout or "").splitlines(keepends=True)
        found = [m.group(1) for m in map(result_line.search, lines) if m]
        if found or time.monotonic() > deadline:
            last = seen[-1].rstrip() if seen else None
            start = max((i + 1 for i, line in enumerate(lines) if line.rstrip() == last), default=0)
            return (found[-1] if found else None), "".join(lines[start:])
        time.sleep(0.5)


def run_on_federation(
    run_config: dict[str, Any],
    connection: Connection,
    *,
    echo: Callable[[str], None] = sys.stdout.write,
    server_app: str | None = None,
    result_line: re.Pattern = RUN_RECORD_LINE,
) -> RunOutcome:
    """Submit one run of fedge's apps with ``run_config`` and follow it until it ends.

    Server-side paths in ``run_config`` travel as given (the server resolves them). Raises :class:`RunFailedError`
    with the server's reason when the run does not complete. ``server_app`` (import path) replaces the training
    ServerApp (``edge.export.acceptance_app:app`` for the acceptance test); ``result_line`` is the line of its log that
    names where it wrote its result (the run record; the acceptance report), returned as ``run_record``.
    """
    tail: list[str] = []
    record: list[str] = []

    def on_line(line: str) -> None:
        echo(line)
        tail[:] = [*tail[-39:], line]
        found = result_line.search(line)
        if found:
            record.append(found.group(1))

    from server.flower_app import write_app_dir

    with tempfile.TemporaryDirectory(prefix="fedge-run-") as tmp:
        home = Path(tmp) / "flwr-home"
        write_connection(
            home, connection.superlink, ca_certificate=connection.ca_certificate, insecure=connection.insecure
        )
        app_dir = write_app_dir(Path(tmp) / "app", run_config, **({"server_app": server_app} if server_app else {}))
        flower_run_id = submit_app(app_dir, home)
        echo(f"Flower run {flower_run_id} started on {connection.superlink}\n")
        code = follow_logs(flower_run_id, home, on_line)
        try:
            status, details = run_status(flower_run_id, home)
        except DeploymentError as e:
            raise DeploymentError(
                f"lost the SuperLink at {connection.superlink} while following run {flower_run_id} (flwr log exited "
                f"with code {code}): {e}. If the server went down, restart it and go on with "
                "`fedge run --resume RUN_DIR`"
            ) from None
        if not record and status.endswith(":completed"):
            late, unseen = _late_run_record(flower_run_id, home, tail, result_line=result_line)
            echo(unseen)
            record.extend([late] if late else [])
    outcome = RunOutcome(
        flower_run_id=flower_run_id, status=status, details=details, run_record=record[-1] if record else None
    )
    if not outcome.completed:
        reason = details or "".join(tail[-10:]).strip() or "no reason given"
        raise RunFailedError(f"run {flower_run_id} ended {status} on the server: {reason}")
    return outcome

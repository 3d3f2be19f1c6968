"""Flower's Deployment Engine around fedge's apps: the SuperLink, the allow-list of nodes, and submitting a run.

Flower 1.41 serves the Fleet, Control and Runtime APIs of a SuperLink on one HTTPS port. ``fedge server`` starts
``flower-superlink`` with its state in a database on disk (so a restarted SuperLink remembers its registered nodes),
TLS from the given certificates, and SuperNode authentication on: only nodes whose public key is registered
(``flwr supernode register``) may connect. ``fedge run`` submits this project as a Flower App with ``flwr run``,
through a Flower configuration (``FLWR_HOME/config.toml``) that names the SuperLink and the CA to trust.
Flower's runtime dependency installation stays off everywhere: it would install a CUDA torch per run.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from server.errors import ServerError

CONNECTION = "fedge"
DEFAULT_PORT = 9092


class DeploymentError(ServerError):
    """A SuperLink that cannot start, a node that cannot be registered, a run that cannot be submitted."""


def flower_env(flwr_home: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    return env


def flower_executable(name: str) -> str:
    """A Flower console script from this environment (next to this Python), else from PATH."""
    here = Path(sys.executable).parent / name
    if here.is_file():
        return str(here)
    found = shutil.which(name)
    if found is None:
        raise DeploymentError(f"{name} is not installed in this environment; install fedge (it brings flwr 1.41)")
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


@dataclass(frozen=True, kw_only=True)
class SuperLinkSettings:
    """How ``fedge server`` starts the SuperLink. ``certificates`` is None only with ``insecure``."""

    state_dir: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    ca_certificate: Path | None = None
    server_certificate: Path | None = None
    server_key: Path | None = None
    insecure: bool = False
    authenticate_nodes: bool = True
    extra_args: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
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
    out = open(log_file, "ab") if log_file is not None else None  # noqa: SIM115 (the child keeps it)
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
    proc = _start_flower_process(settings.command(), settings.state_dir, settings.flwr_home, log_file)
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


def submit_run(
    app_dir: Path,
    flwr_home: Path,
    overrides_file: Path,
    *,
    stream: bool = True,
    log_file: Path | None = None,
) -> subprocess.Popen:
    """``flwr run APP fedge --stream -c OVERRIDES``: submit the app and (with ``stream``) follow its logs."""
    cmd = [flower_executable("flwr"), "run", str(app_dir), CONNECTION, "-c", str(overrides_file)]
    if stream:
        cmd.append("--stream")
    return _start_flower_process(cmd, app_dir, flwr_home, log_file)


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def write_overrides(path: Path, run_config: dict[str, object]) -> Path:
    """A flat TOML file of run-config values, the form ``flwr run -c FILE`` reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in run_config.items()), encoding="utf-8")
    return path

"""Serving the dashboard with uvicorn: in the foreground (``fedge ui``) or in a background thread (``fedge demo
--ui``, the tests). Loopback by default; any other address only with an access token.

>>> check_bind("127.0.0.1", None), check_bind("0.0.0.0", "a-long-enough-token")
('127.0.0.1', '0.0.0.0')
>>> check_bind("0.0.0.0", None)
Traceback (most recent call last):
...
simulations.dashboard.data.DashboardError: refusing to serve the dashboard on 0.0.0.0 without an access token: ...
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
import threading
import time
from pathlib import Path

from edge.delivery.errors import DeliveryError
from edge.delivery.fleet_db import is_postgres_url
from simulations.dashboard.data import DashboardError

DEFAULT_PORT = 8765
#: a token shorter than this is refused: it would be guessed
MIN_TOKEN_LENGTH = 16


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> str:
    """``host``, if the dashboard may listen there: loopback always, anything else only with a token."""
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise DashboardError(
            f"the access token is {len(token)} characters; use at least {MIN_TOKEN_LENGTH}, "
            f"e.g. {secrets.token_urlsafe(24)}"
        )
    if not is_loopback(host) and not token:
        raise DashboardError(
            f"refusing to serve the dashboard on {host} without an access token: anyone who reaches that address "
            f"would see the runs and the fleet. Give one with --token or FEDGE_UI_TOKEN (e.g. "
            f"{secrets.token_urlsafe(24)}), or keep the default --host 127.0.0.1"
        )
    return host


def _url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{port}/"


class DashboardServer:
    """The dashboard on ``host:port`` (port 0: a free one), in a background thread until :meth:`stop`."""

    def __init__(
        self,
        runs_dir: str | Path = "runs",
        fleet_db: str | Path | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        token: str | None = None,
        poll_ms: int = 1500,
    ) -> None:
        import uvicorn

        from simulations.dashboard.app import create_app

        self.host = check_bind(host, token)
        self.token = token
        app = create_app(runs_dir, fleet_db, token=token, poll_ms=poll_ms)
        self._sock = _listen(self.host, port)
        self.port = self._sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", ws="none")
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The page's address (without the token)."""
        return _url(self.host, self.port)

    def start(self, timeout: float = 15.0) -> DashboardServer:
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name="fedge-ui", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise DashboardError(f"the dashboard did not start on {self.url} within {timeout:g} s")
            time.sleep(0.02)
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until Ctrl-C (uvicorn handles SIGINT and SIGTERM)."""
        try:
            self._server.run(sockets=[self._sock])
        finally:
            self._sock.close()

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self._sock.close()

    def __enter__(self) -> DashboardServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket, bound now: a taken port is an error here, with the fix, not a log line in a thread."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]") if host != "localhost" else "127.0.0.1", port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise DashboardError(f"cannot listen on {host}:{port}: {e}; choose another --port (0 picks a free one)") from e
    sock.set_inheritable(True)
    return sock


def check_fleet_db(fleet_db: str | Path) -> None:
    """Fail before serving when ``--fleet`` names no database: a SQLite file that does not exist, or a PostgreSQL
    server that cannot be reached (a database no collector has written yet is shown as empty, with a note)."""
    if not is_postgres_url(fleet_db):
        if not Path(fleet_db).is_file():
            raise DashboardError(f"{fleet_db} does not exist: give the fleet database a collector writes (--fleet)")
        return
    from edge.delivery.postgres_store import PostgresFleetStore

    try:
        PostgresFleetStore(str(fleet_db), read_only=True).close()
    except DeliveryError as e:
        raise DashboardError(f"{e} (--fleet)") from e


def serve(
    runs_dir: str | Path = "runs",
    fleet_db: str | Path | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    token: str | None = None,
    on_ready=None,
) -> None:
    """``fedge ui``: serve the dashboard until Ctrl-C; ``on_ready(server)`` is called once it listens."""
    runs = Path(runs_dir)
    if not runs.is_dir() and fleet_db is None:
        raise DashboardError(f"{runs} is not a directory: give the runs directory with --runs (default: runs/)")
    if fleet_db is not None:
        check_fleet_db(fleet_db)
    server = DashboardServer(runs, fleet_db, host=host, port=port, token=token)
    if on_ready is not None:
        on_ready(server)
    server.serve_forever()

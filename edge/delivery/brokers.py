"""Broker processes: start one, wait until it takes connections, stop it (also on Ctrl-C), restart it."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from edge.agent.protocol import BrokerAddress
from edge.delivery.errors import BrokerError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not port_open(host, port):
        if process is not None and process.poll() is not None:
            raise BrokerError(f"the broker exited with code {process.returncode} before it listened on {port}")
        if time.monotonic() > deadline:
            raise BrokerError(f"nothing listens on {host}:{port} after {timeout:.0f} s")
        time.sleep(0.05)


class BrokerProcess:
    """A broker running as its own process on loopback."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def log_tail(self) -> str:
        return ""

    def start(self, timeout: float = 15.0) -> BrokerProcess:
        if port_open(self.host, self.port):
            raise BrokerError(f"port {self.port} is already in use: pick another (--port)")
        log_file = getattr(self, "log_file", None)
        if log_file is not None:  # a long-lived broker writes to a file, never to a pipe nobody drains
            Path(log_file).parent.mkdir(parents=True, exist_ok=True)
            with open(log_file, "ab") as log:
                self.process = subprocess.Popen(
                    self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
                )
        else:
            self.process = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
        try:
            wait_for_port(self.host, self.port, timeout, self.process)
        except BrokerError as e:
            self.stop()  # first: reading the pipe of a broker that is still running would wait for ever
            err = self.process.stderr.read().decode(errors="replace")[-1000:] if self.process.stderr else ""
            raise BrokerError(f"{e}: {err or self.log_tail()}") from e
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None
        deadline = time.monotonic() + timeout
        while port_open(self.host, self.port) and time.monotonic() < deadline:
            time.sleep(0.05)

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def address(self) -> BrokerAddress:
        return BrokerAddress(self.host, self.port)

    def __enter__(self) -> BrokerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class EmbeddedBrokerProcess(BrokerProcess):
    """The embedded broker (amqtt) as its own process: about three times faster than inside the caller's
    event loop, and the caller's threads do not slow it down."""

    def __init__(self, port: int, host: str = "127.0.0.1", log_file: Path | None = None) -> None:
        super().__init__(host, port)
        self.log_file = log_file

    def log_tail(self) -> str:
        try:
            return Path(self.log_file).read_text(encoding="utf-8", errors="replace")[-1000:] if self.log_file else ""
        except OSError:
            return ""

    def command(self) -> list[str]:
        return [sys.executable, "-m", "edge.delivery.embedded_broker", "--host", self.host, "--port", str(self.port)]

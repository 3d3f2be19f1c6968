"""The warm ClientApp process with its real preloads (torch, Opacus, Flower, fedge's ClientApp) and Flower's own
flwr-clientapp entry point, reached through the launcher as SuperExec reaches it."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from client.warm_clientapp import write_launcher
from server.deployment import flower_executable

pytestmark = pytest.mark.integration


def test_flowers_clientapp_runs_forked_from_the_warm_process(tmp_path):
    socket_path = tmp_path / "warm.sock"
    launcher = write_launcher(
        tmp_path / "bin", socket_path=socket_path, flower_clientapp=flower_executable("flwr-clientapp")
    )
    server = subprocess.Popen([sys.executable, "-m", "client.warm_clientapp", "--socket", str(socket_path)])
    try:
        deadline = time.monotonic() + 240
        while not socket_path.exists():  # listening once torch, Opacus and Flower are imported
            assert server.poll() is None, "the warm process failed to import what it preloads"
            assert time.monotonic() < deadline, "the warm process did not listen within 240 s"
            time.sleep(0.1)
        started = time.monotonic()
        shown = subprocess.run([str(launcher), "--help"], capture_output=True, text=True, timeout=120)
        assert shown.returncode == 0, shown.stderr
        assert "Run a Flower ClientApp" in shown.stdout  # Flower's own argument parser answered
        assert "--runtime-api-address" in shown.stdout
        # no assertion on the time itself; it is printed for the person running the test
        print(f"flwr-clientapp --help through the warm process: {time.monotonic() - started:.2f} s")
    finally:
        server.terminate()
        server.wait(timeout=10)

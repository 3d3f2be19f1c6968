"""The deployment commands: help, credentials, and bad input as one clear line (exit 2, no traceback)."""

import subprocess
import sys

import pytest

from server.credentials import check_private_key


def _fedge(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "simulations.cli", *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def test_certs_and_node_keys_commands(tmp_path):
    assert _fedge("certs", "--out", str(tmp_path / "c"), "--host", "localhost").returncode == 0
    assert (tmp_path / "c" / "ca.crt").is_file()
    result = _fedge("node-keys", "hospital-a", "iot-1", "--out", str(tmp_path / "k"))
    assert result.returncode == 0, result.stderr
    check_private_key(tmp_path / "k" / "iot-1.key")


@pytest.mark.parametrize(
    "args, message",
    [
        (["node", "--superlink", "127.0.0.1:1", "--data", "/no/such.csv", "--insecure"], "does not exist"),
        (["run", "--superlink", "127.0.0.1:1"], "CA certificate"),
        (["run", "--insecure", "--resume", "/no/such/run"], "not a run directory"),
        (["server", "--dir", "{tmp}/s"], "fedge certs"),
        (["server", "--dir", "{tmp}/s", "--insecure", "--allow", "/no/key.pub"], "does not exist"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, args, message):
    result = _fedge(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr


def test_every_deployment_command_explains_itself():
    for command in ("server", "node", "run", "certs", "node-keys"):
        result = _fedge(command, "--help")
        assert result.returncode == 0 and "Usage" in result.stdout

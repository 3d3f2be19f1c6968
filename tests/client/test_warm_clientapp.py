"""The warm ClientApp process and its flwr-clientapp launcher, driven with a stand-in for Flower's entry point."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from client.node import SUPEREXEC_POLL_ENV, node_environment
from client.warm_clientapp import LAUNCHER_NAME, write_launcher

ROOT = Path(__file__).resolve().parents[2]
ENTRY = "tests.client.test_warm_clientapp"
_calls = 0  # changed by one forked child; the next child must not see it
_primed = 0  # set once in the warm process by a "module:function" preload entry


def prime() -> None:
    global _primed
    _primed += 1


def fake_clientapp() -> None:
    """Stands in for Flower's flwr-clientapp: reports what its process was given, then exits as told."""
    global _calls
    _calls += 1
    print(
        json.dumps(
            {
                "argv": sys.argv[1:],
                "cwd": os.getcwd(),
                "token": os.environ.get("FAKE_TOKEN"),
                "pid": os.getpid(),
                "parent": os.getppid(),
                "calls": _calls,
                "primed": _primed,
            }
        ),
        flush=True,
    )
    if "--die" in sys.argv:
        os.kill(os.getpid(), signal.SIGKILL)
    sys.exit(int(sys.argv[sys.argv.index("--exit") + 1]) if "--exit" in sys.argv else 0)


def report_object_pulls() -> None:
    """Stands in for Flower's flwr-clientapp: reports how its ClientApp would pull its message's objects."""
    from flwr.supernode.runtime import run_clientapp

    defaults = run_clientapp.pull_and_inflate_object_from_tree.__kwdefaults__
    print(json.dumps({k: defaults[k] for k in ("initial_backoff", "backoff_cap", "max_tries_per_object")}))


@pytest.fixture
def warm(tmp_path):
    """A warm process serving ``fake_clientapp`` and its launcher; Flower's stand-in prints "cold"."""
    socket_path = tmp_path / "warm.sock"
    cold = tmp_path / "cold-flwr-clientapp"
    cold.write_text(f"#!{sys.executable}\nimport sys\nprint('cold', *sys.argv[1:])\nsys.exit(5)\n")
    cold.chmod(0o700)
    launcher = write_launcher(tmp_path / "bin", socket_path=socket_path, flower_clientapp=str(cold))
    server = subprocess.Popen(
        [sys.executable, "-m", "client.warm_clientapp", "--socket", str(socket_path)]
        + ["--entry", f"{ENTRY}:fake_clientapp", "--preload", f"{ENTRY},{ENTRY}:prime"],
        cwd=ROOT,
    )
    deadline = time.monotonic() + 60
    while not socket_path.exists():
        assert server.poll() is None, "the warm process ended before it listened"
        assert time.monotonic() < deadline, "the warm process did not listen within 60 s"
        time.sleep(0.05)
    try:
        yield launcher, server, socket_path
    finally:
        server.terminate()
        server.wait(timeout=10)


def _launch(launcher: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, FAKE_TOKEN="t-123")
    return subprocess.run([str(launcher), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_each_message_runs_in_its_own_child_of_the_warm_process_with_the_callers_args_env_and_streams(warm, tmp_path):
    launcher, server, _ = warm
    first = _launch(launcher, "--token", "abc", "--exit", "3", cwd=tmp_path)
    second = _launch(launcher, "--token", "def", cwd=tmp_path)
    assert first.returncode == 3, first.stderr
    assert second.returncode == 0, second.stderr
    one, two = json.loads(first.stdout), json.loads(second.stdout)
    assert one["argv"] == ["--token", "abc", "--exit", "3"] and two["argv"] == ["--token", "def"]
    assert one["cwd"] == two["cwd"] == str(tmp_path) and one["token"] == "t-123"
    assert one["parent"] == two["parent"] == server.pid  # forked from the warm process, not started afresh
    assert one["pid"] != two["pid"]
    assert one["calls"] == two["calls"] == 1  # what one message's process changed does not reach the next
    assert one["primed"] == two["primed"] == 1  # the preload's function ran once, in the warm process


def test_after_the_warm_up_a_message_building_its_optimizer_imports_nothing_more():
    """torch imports torch._dynamo when a process builds its first optimizer (a second of CPU); the warm process
    does that once, so a forked child that builds one (every train message) finds everything imported."""
    code = (
        "import sys, torch; from client.warm_clientapp import first_optimizer; {warm}"
        "before = set(sys.modules); torch.optim.SGD(torch.nn.Linear(3, 2).parameters(), lr=0.1, momentum=0.9); "
        "print(len(set(sys.modules) - before))"
    )
    cold = subprocess.run([sys.executable, "-c", code.format(warm="")], cwd=ROOT, capture_output=True, text=True)
    warmed = subprocess.run(
        [sys.executable, "-c", code.format(warm="first_optimizer(); ")], cwd=ROOT, capture_output=True, text=True
    )
    assert cold.returncode == 0 and warmed.returncode == 0, cold.stderr + warmed.stderr
    assert int(cold.stdout) > 50  # what the warm-up is for: without it, the first optimizer imports torch._dynamo
    assert int(warmed.stdout) == 0


def test_a_child_killed_by_a_signal_exits_the_launcher_as_a_shell_reports_it(warm, tmp_path):
    launcher, server, _ = warm
    killed = _launch(launcher, "--die", cwd=tmp_path)
    assert killed.returncode == 128 + signal.SIGKILL
    assert _launch(launcher, "--exit", "0", cwd=tmp_path).returncode == 0  # the warm process serves on
    assert server.poll() is None


def test_without_the_warm_process_the_launcher_runs_flowers_own_clientapp(warm, tmp_path):
    launcher, server, socket_path = warm
    server.terminate()
    server.wait(timeout=10)
    socket_path.unlink(missing_ok=True)
    cold = _launch(launcher, "--token", "abc", cwd=tmp_path)
    assert cold.returncode == 5 and cold.stdout.split() == ["cold", "--token", "abc"]


def test_node_environment_polls_sooner_and_puts_the_launcher_first_only_while_the_node_runs(tmp_path):
    base = {"PATH": "/usr/bin"}
    with node_environment(base, flower_clientapp="/nonexistent/flwr-clientapp", warm=False) as env:
        assert env[SUPEREXEC_POLL_ENV] == "0.5" and env["PATH"] == "/usr/bin"
    with node_environment({**base, SUPEREXEC_POLL_ENV: "2"}, flower_clientapp="/x", warm=False) as env:
        assert env[SUPEREXEC_POLL_ENV] == "2"  # the operator's own setting wins
    with node_environment(base, flower_clientapp="/nonexistent/flwr-clientapp") as env:
        first = Path(env["PATH"].split(os.pathsep)[0])
        assert (first / LAUNCHER_NAME).is_file() and env["PATH"].endswith("/usr/bin")
        assert oct(first.parent.stat().st_mode & 0o777) == "0o700"
    assert not first.parent.exists()


def test_flower_still_starts_clientapps_by_the_name_and_entry_point_the_launcher_stands_in_for():
    """The launcher relies on SuperExec starting `flwr-clientapp` by name from PATH and on that console script's
    entry point: if Flower changes either, the warm path would be silently skipped or run the wrong thing."""
    from importlib.metadata import entry_points

    from flwr.supercore.constant import TASK_TYPE_TO_COMMAND, TaskType

    from client.warm_clientapp import FLOWER_ENTRY

    assert TASK_TYPE_TO_COMMAND[TaskType.CLIENT_APP] == LAUNCHER_NAME
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == LAUNCHER_NAME]
    assert script.value == FLOWER_ENTRY


def test_a_node_killed_outright_leaves_no_warm_process_or_private_directory(tmp_path):
    private = tmp_path / "private"
    private.mkdir()
    socket_path = private / "warm.sock"
    # stands in for `fedge node`: starts the warm process, then is killed with SIGKILL (no cleanup of its own)
    node = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time; "
            "p = subprocess.Popen([sys.executable, '-m', 'client.warm_clientapp', '--socket', sys.argv[1], "
            f"'--remove-on-exit', sys.argv[2], '--entry', '{ENTRY}:fake_clientapp', '--preload', '{ENTRY}']); "
            "print(p.pid, flush=True); time.sleep(600)",
            str(socket_path),
            str(private),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    warm_pid = int(node.stdout.readline())
    deadline = time.monotonic() + 60
    while not socket_path.exists():
        assert time.monotonic() < deadline, "the warm process did not listen within 60 s"
        time.sleep(0.05)
    node.kill()
    node.wait(timeout=10)
    deadline = time.monotonic() + 30
    while private.exists() or Path(f"/proc/{warm_pid}").exists():
        assert time.monotonic() < deadline, "the warm process outlived its node or left its directory behind"
        time.sleep(0.1)


def test_children_of_a_warm_process_with_flower_ask_for_missing_objects_sooner(tmp_path):
    socket_path = tmp_path / "warm.sock"
    launcher = write_launcher(tmp_path / "bin", socket_path=socket_path, flower_clientapp="/bin/false")
    server = subprocess.Popen(
        [sys.executable, "-m", "client.warm_clientapp", "--socket", str(socket_path)]
        + ["--entry", f"{ENTRY}:report_object_pulls", "--preload", f"flwr.supernode.runtime.run_clientapp,{ENTRY}"],
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 120
        while not socket_path.exists():
            assert server.poll() is None, "the warm process ended before it listened"
            assert time.monotonic() < deadline, "the warm process did not listen within 120 s"
            time.sleep(0.05)
        child = _launch(launcher, cwd=tmp_path)
        assert child.returncode == 0, child.stderr
        # Flower's own: 1 s doubling up to 10 s, 500 tries; the child forked from the warm process asks sooner
        assert json.loads(child.stdout) == {"initial_backoff": 0.05, "backoff_cap": 1.0, "max_tries_per_object": 5000}
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_the_pinned_flowers_clientapp_pulls_its_message_with_the_defaults_the_warm_process_changes():
    import inspect

    from flwr.supercore.inflatable import inflatable_utils
    from flwr.supernode.runtime import run_clientapp

    assert run_clientapp.pull_and_inflate_object_from_tree is inflatable_utils.pull_and_inflate_object_from_tree
    source = inspect.getsource(run_clientapp.pull_task_input)
    assert "pull_and_inflate_object_from_tree(" in source and "initial_backoff" not in source  # Flower's defaults

"""fedge from a built wheel, no checkout: the README's three-node walkthrough, run as written, in a directory outside
the project, with the wheel's ``fedge`` (a fresh venv; not activated: only its ``bin/`` is on PATH).

The wheel is built from a copy of the sources (``pip wheel --no-deps --no-build-isolation``) and installed with
``pip install --no-deps`` into a fresh venv that reuses the dev venv's already-installed dependencies through a
``.pth`` line (the dev venv's editable fedge is not loaded from there: its import hook is itself a ``.pth`` file, and
``.pth`` files in a directory added that way are not run). Flower's console scripts are written into the fresh venv
as pip would write them, so every Flower process runs the wheel's fedge. The walkthrough's ports are swapped for
free ones; everything else (relative paths, ``--dir fedge-server``) is the README's text. One federation serves
every check: the walkthrough's run completes; a run that fails on the server fails ``fedge run``.
"""

from __future__ import annotations

import configparser
import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from server.processes import stop_tree

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path("/proc").is_dir(), reason="process-tree clean-up reads /proc (Linux)"),
]

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
SOURCES = ("shared_models", "client", "server", "edge", "simulations", "pyproject.toml", "README.md")
TIMEOUT = 400  # seconds for any one wait; a hang fails instead of blocking CI


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def walkthrough_commands(readme: str) -> list[str]:
    """The shell commands of the README's "Three nodes on one machine" block, continuation lines joined."""
    section = readme[readme.index("### Three nodes on one machine") :]
    block = section[section.index("```bash") + len("```bash") : section.index("```", section.index("```bash") + 7)]
    joined = re.sub(r"\\\n\s*", "", block)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def _console_scripts(venv: Path, distribution: str) -> None:
    """Write ``distribution``'s console scripts into ``venv/bin``, as ``pip install`` would."""
    import importlib.metadata

    entry_points = configparser.ConfigParser()
    entry_points.read_string(importlib.metadata.distribution(distribution).read_text("entry_points.txt") or "")
    for name, target in entry_points["console_scripts"].items():
        module, function = target.split(":")
        script = venv / "bin" / name
        script.write_text(
            f"#!{venv / 'bin' / 'python'}\nimport sys\nfrom {module} import {function}\nsys.exit({function}())\n"
        )
        script.chmod(0o755)


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    source.mkdir()
    for name in SOURCES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "results"))
        else:
            shutil.copy2(src, source / name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"), "."],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (root / "dist").glob("fedge-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    (site_packages,) = (venv / "lib").glob("python*/site-packages")
    (site_packages / "dev-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", wheel],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    _console_scripts(venv, "flwr")
    return venv


class Walkthrough:
    def __init__(self, venv: Path, work: Path) -> None:
        self.venv, self.work = venv, work
        self.logs = work / "logs"
        self.logs.mkdir()
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = {
            "PATH": f"{venv / 'bin'}:/usr/bin:/bin",  # the wheel's venv, "active"; no dev venv, no checkout
            "HOME": str(work / "home"),  # the nodes' default --state-dir lands here, not in the user's home
            "FLWR_HOME": str(work / "flwr-home"),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "PYTHONUNBUFFERED": "1",
            "LANG": "C.UTF-8",
        }

    def start(self, name: str, command: str) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(shlex.split(command), cwd=self.work, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs[name] = proc
        return proc

    def run(self, name: str, command: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
        proc = self.start(name, command)
        try:
            code = proc.wait(timeout=timeout)
        finally:
            stop_tree(self.procs.pop(name), kill=True)
        return subprocess.CompletedProcess(command, code, self.log(name), "")

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    def wait_for(self, condition, what: str, log: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            if condition():
                return
            if log in self.procs and self.procs[log].poll() is not None:
                break
            time.sleep(0.5)
        raise AssertionError(f"{what} did not happen; {log} log:\n{self.log(log)[-3000:]}")

    def stop_all(self) -> None:
        for name in list(self.procs):
            stop_tree(self.procs.pop(name), kill=True)


@pytest.fixture(scope="module")
def federation(wheel_venv, tmp_path_factory):
    work = tmp_path_factory.mktemp("walkthrough")
    (work / "tests" / "data").mkdir(parents=True)
    for table in ("cleveland", "hungarian", "switzerland", "va"):
        shutil.copy2(DATA / f"processed.{table}.data", work / "tests" / "data")
    port = str(_free_port())
    commands = walkthrough_commands((ROOT / "README.md").read_text())
    assert [c.split()[1] for c in commands] == ["certs", "node-keys", "server", "node", "node", "node", "run"]
    fed = Walkthrough(wheel_venv, work)
    try:
        for command in commands[:2]:
            done = fed.run(command.split()[1], command, timeout=120)
            assert done.returncode == 0, done.stdout
        fed.start("server", commands[2].replace("9092", port))
        fed.wait_for(lambda: "SuperLink up" in fed.log("server"), "the SuperLink starting", "server")
        nodes = []
        for command in commands[3:6]:
            name = re.search(r"keys/(\w+)\.key", command).group(1)
            fed.start(
                name, re.sub(r"--runtime-port \d+", f"--runtime-port {_free_port()}", command.replace("9092", port))
            )
            nodes.append(name)
        fed.wait_for(
            lambda: all("SuperNode ID" in fed.log(n) or "Connection successful" in fed.log(n) for n in nodes),
            "three nodes connecting",
            "server",
        )
        yield fed, commands[6].replace("9092", port)
    finally:
        fed.stop_all()


def test_wheel_install_runs_the_readme_walkthrough_as_written(federation):
    fed, run_command = federation
    done = fed.run("run", run_command)
    assert done.returncode == 0, done.stdout[-4000:]
    record = re.search(r"^run record: (.+)$", done.stdout, re.MULTILINE)
    assert record, done.stdout[-2000:]
    run_dir = Path(record.group(1).strip())
    # runs-dir "runs" was resolved where `fedge server` runs (the walkthrough's directory), not in --dir
    assert run_dir.parent == fed.work / "runs"
    rounds = json.loads((run_dir / "metrics.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    assert all(r["clients-trained"] == 3 for r in rounds[1:])
    assert set(json.loads((run_dir / "privacy.json").read_text())["clients"]) == {"hungarian", "switzerland", "va"}


def test_the_apps_the_server_runs_are_the_wheels(federation, wheel_venv):
    fed, _ = federation
    where = subprocess.run(
        [
            str(wheel_venv / "bin" / "python"),
            "-c",
            "import server.server_app, client.client_app as c; print(c.__file__)",
        ],
        cwd=fed.work,
        env=fed.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(wheel_venv), where.stdout
    assert not Path(where.stdout.strip()).is_relative_to(ROOT)


def test_a_run_that_fails_on_the_server_fails_fedge_run_with_the_reason(federation):
    fed, run_command = federation
    bad = run_command.replace("tests/data/processed.cleveland.data", "no-such-table.csv")
    done = fed.run("failed-run", bad + " --rounds 1")
    assert done.returncode == 2, done.stdout[-3000:]
    assert "finished:failed" in done.stdout and "no-such-table.csv does not exist" in " ".join(done.stdout.split())
    assert "run record:" not in done.stdout


def test_an_experiment_without_its_server_table_names_it_before_anything_starts(federation):
    fed, run_command = federation
    without = run_command.split(" --set data-path=")[0]
    done = fed.run("no-table", without, timeout=120)
    assert done.returncode == 2
    text = " ".join(done.stdout.split())
    assert "processed.cleveland.data" in text and "--set data-path=PATH" in text
    assert "submitting" not in text

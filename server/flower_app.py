"""The Flower App fedge hands to Flower: a directory holding one ``pyproject.toml``.

Its ``[tool.flwr.app.components]`` name fedge's ServerApp and ClientApp by import path (``server.server_app:app``,
``client.client_app:app``), which Flower imports from the installed fedge package, and its
``[tool.flwr.app.config]`` is the run's fully resolved run config. ``fedge simulate`` gives it to Flower's simulation
engine; ``fedge run`` submits it to a SuperLink (``flwr run APP_DIR``), which builds it into a FAB. Nothing in it
depends on where fedge is installed, so the same directory works from a checkout and from a wheel.
"""

from __future__ import annotations

import json
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

SERVER_APP = "server.server_app:app"
CLIENT_APP = "client.client_app:app"


def toml_value(value: object) -> str:
    """One run-config value as TOML (the run config holds only bools, numbers and strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def _fedge_version() -> str:
    try:
        return metadata.version("fedge")
    except metadata.PackageNotFoundError:  # imported from a checkout that was never installed
        return "0.0.0"


def write_app_dir(
    directory: Path, run_config: dict[str, Any], *, name: str = "fedge-run", server_app: str = SERVER_APP
) -> Path:
    """Write a Flower App into ``directory`` whose run config defaults are ``run_config``; the directory.

    ``server_app``: the ServerApp by import path (``edge.export.acceptance_app:app`` for ``fedge accept --superlink``,
    which sends the nodes the acceptance test instead of training rounds); the ClientApp is always fedge's."""
    lines = [
        "[project]",
        f"name = {json.dumps(name)}",
        f"version = {json.dumps(_fedge_version())}",
        'description = "fedge: federated training with differential privacy (ServerApp and ClientApp from fedge)"',
        'license = "Apache-2.0"',
        "",
        "[tool.flwr.app]",
        'publisher = "fedge"',
        "",
        "[tool.flwr.app.components]",
        f"serverapp = {json.dumps(server_app)}",
        f"clientapp = {json.dumps(CLIENT_APP)}",
        "",
        "[tool.flwr.app.config]",
        *(f"{key} = {toml_value(value)}" for key, value in run_config.items()),
    ]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pyproject.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    copy_user_code(directory, run_config)
    return directory


def copy_user_code(directory: Path, run_config: dict[str, Any]) -> list[Path]:
    """Copy the user's packages that ``model`` and ``dataset`` name by import path (from ``project-dir``) into the
    app directory, so the Flower App (the FAB ``fedge run`` submits) carries the user's code to every node."""
    project = Path(str(run_config.get("project-dir") or ""))
    if not str(run_config.get("project-dir") or "") or not project.is_dir():
        return []
    copied = []
    for key in ("model", "dataset"):
        spec = str(run_config.get(key, ""))
        if ":" not in spec:
            continue
        top = spec.partition(":")[0].split(".")[0]
        source = project / top
        if source.is_dir() and not (directory / top).exists():
            shutil.copytree(source, directory / top, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            copied.append(directory / top)
        elif (project / f"{top}.py").is_file() and not (directory / f"{top}.py").exists():
            shutil.copy2(project / f"{top}.py", directory / f"{top}.py")
            copied.append(directory / f"{top}.py")
    return copied

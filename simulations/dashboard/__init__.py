"""``fedge ui``: a local, read-only web dashboard of the runs, their artifacts, the fleet and the rollouts.

:func:`~simulations.dashboard.app.create_app` builds the web app (Starlette) over a runs directory and a fleet
database; :class:`~simulations.dashboard.server.DashboardServer` serves it (uvicorn), loopback only unless given an
access token; :class:`~simulations.dashboard.data.DashboardData` reads what it shows (no torch). The page polls a
JSON API, so it follows a simulation, a rollout or telemetry as they happen. Its charts are uPlot, vendored in
``static/`` (see ``static/VENDORED.md``): nothing is loaded from the internet.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "create_app": "simulations.dashboard.app",
    "DashboardData": "simulations.dashboard.data",
    "DashboardError": "simulations.dashboard.data",
    "DashboardServer": "simulations.dashboard.server",
    "check_bind": "simulations.dashboard.server",
    "serve": "simulations.dashboard.server",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

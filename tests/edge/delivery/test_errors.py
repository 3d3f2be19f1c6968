"""fedge's root error lives in the torch-free bottom layer (edge.agent.errors): the server side of edge delivery
imports without shared_models or torch, and every family still shares one root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge.agent.errors import AgentError, FedgeError, MalformedMessageError
from edge.delivery.errors import ArtifactError, DeliveryError, as_delivery_error

ROOT = Path(__file__).resolve().parents[3]
DELIVERY_MODULES = sorted(p.stem for p in (ROOT / "edge" / "delivery").glob("*.py") if p.stem != "__init__")

BLOCKED_IMPORT = """
import importlib, sys
for name in ("torch", "shared_models", "flwr", "opacus"):
    sys.modules[name] = None  # any import of these now raises ImportError
for module in sys.argv[1:]:
    importlib.import_module(module)
from edge.delivery.errors import DeliveryError
from edge.agent.errors import FedgeError
assert issubclass(DeliveryError, FedgeError)
assert not any(m == "torch" or m.startswith(("torch.", "shared_models")) for m in sys.modules if sys.modules[m])
print("ok")
"""


def test_edge_delivery_imports_without_shared_models_or_torch():
    modules = ["edge.delivery", *(f"edge.delivery.{m}" for m in DELIVERY_MODULES), "edge.export.errors"]
    done = subprocess.run(
        [sys.executable, "-c", BLOCKED_IMPORT, *modules],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"


def test_one_root_for_every_family():
    from shared_models.errors import FedgeError as reexported
    from shared_models.errors import SharedModelsError

    assert reexported is FedgeError
    for family in (AgentError, DeliveryError, SharedModelsError):
        assert issubclass(family, FedgeError)


def test_agent_errors_met_by_the_server_side_read_as_delivery_errors():
    with pytest.raises(ArtifactError, match="bad manifest") as caught:
        with as_delivery_error(ArtifactError):
            raise MalformedMessageError("bad manifest")
    assert isinstance(caught.value.__cause__, AgentError)

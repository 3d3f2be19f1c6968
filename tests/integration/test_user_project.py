"""A project made by fedge new, end to end per template: a 2-round DP simulation of 2 nodes, fedge package of the
int8 model in both formats, and the device agent's runtime running the int8 artifact with the preprocessing its
description declares."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration


def _fedge(*args: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    return subprocess.run(
        [sys.executable, "-m", "simulations.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env=env,
    )


def _raw_samples(project: Path, template: str) -> tuple[np.ndarray, np.ndarray]:
    """Samples as a device would get them (before the declared preprocessing) and their labels."""
    if template == "image":
        from PIL import Image

        files = sorted((project / "data").glob("*/*.png"))[::30]  # every class
        x = np.stack([np.asarray(Image.open(f), dtype=np.float32)[None] for f in files])
        return x, np.asarray([int(f.parent.name) for f in files])
    if template == "tabular":
        rows = (project / "data" / "table.csv").read_text().splitlines()[1:61]
        values = np.asarray([[float(v) for v in r.split(",")] for r in rows], dtype=np.float32)
        return values[:, :-1], values[:, -1].astype(int)
    with np.load(project / "data" / "sensors.npz") as archive:
        return archive["x"][:60], archive["y"][:60]


@pytest.mark.parametrize("template", ["image", "tabular", "timeseries"])
def test_new_project_trains_with_dp_packages_and_runs_on_the_agent(tmp_path: Path, template: str):
    from edge.agent.runtime import load_runner, probabilities

    project = tmp_path / f"proj-{template}"
    made = _fedge("new", str(project), "--template", template, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    simulated = _fedge("simulate", "-r", "2", "-n", "2", cwd=project)
    assert simulated.returncode == 0, simulated.stdout + simulated.stderr
    runs = sorted((project / "runs").iterdir())
    assert len(runs) == 1
    info = json.loads((runs[0] / "model.json").read_text())
    assert info["model-import-path"] == f"proj_{template}.task:build_model"
    privacy = json.loads((runs[0] / "privacy.json").read_text())
    assert privacy  # the ledger of a DP run
    packaged = _fedge("package", str(runs[0]), "-V", "int8", "--latency-runs", "5", cwd=project)
    assert packaged.returncode == 0, packaged.stdout + packaged.stderr
    x, y = _raw_samples(project, template)
    for fmt in ("onnx", "tflite"):
        artifact = runs[0] / "artifacts" / f"int8.{fmt}"
        description = json.loads(Path(f"{artifact}.json").read_text())
        preprocessing = description["source"].get("device-preprocessing")
        assert (preprocessing is not None) == (template in ("image", "tabular"))
        runner = load_runner(fmt, artifact.read_bytes(), preprocessing)
        predictions = np.asarray([int(np.argmax(probabilities(runner.predict(sample)))) for sample in x])
        assert predictions.shape == y.shape
        assert (predictions == y).mean() > 1.0 / len(set(y.tolist()))  # better than chance on the device

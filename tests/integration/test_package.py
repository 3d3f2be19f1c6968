"""fedge package end to end: a real simulated run, then the command as a user runs it."""

from __future__ import annotations

import json

import pytest

from tests.edge.compress.trained_digits import INPUT_SHAPE
from tests.edge.export.checks import check_description, fedge

pytestmark = pytest.mark.integration


def test_fedge_package_end_to_end_on_a_simulated_run(tmp_path):
    sim = fedge(
        "simulate",
        "--config",
        "digits-dp",
        "--num-clients",
        "2",
        "--rounds",
        "2",
        "--runs-dir",
        str(tmp_path),
        "--set",
        "progress=false",
        # the image CNN (the assertions below check its (1, 8, 8) image input), at its own learning rate
        "--set",
        "model=digits-cnn",
        "--set",
        "learning-rate=0.5",
    )
    assert sim.returncode == 0, sim.stderr[-3000:]
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    done = fedge(
        "package",
        str(run_dir),
        "--variant",
        "fp32",
        "--variant",
        "int8",
        "--variant",
        "student",
        "--distill-epochs",
        "2",
        "--latency-runs",
        "20",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = run_dir / "artifacts"
    files = {p.name for p in out.iterdir()}
    artifacts = [f"{v}{s}" for v in ("fp32", "int8", "student-fp32") for s in (".onnx", ".tflite")]
    assert (
        set(artifacts) | {f"{a}.json" for a in artifacts} | {"report.md", "accuracy-size.png", "package.json"} == files
    )
    descriptions = {a: json.loads((out / f"{a}.json").read_text()) for a in artifacts}
    for description in descriptions.values():
        check_description(out, description)
        assert description["source"]["run-id"] == run_dir.name
    for fmt in ("onnx", "tflite"):
        assert descriptions[f"fp32.{fmt}"]["metrics"]["max-abs-diff"] <= 1e-4
        assert descriptions[f"int8.{fmt}"]["metrics"]["top1-agreement"] >= 0.85
    tflite_int8 = descriptions["int8.tflite"]
    assert tflite_int8["input"]["dtype"] == "int8" and tflite_int8["input"]["shape"] == [1, *INPUT_SHAPE]
    assert tflite_int8["input"]["quantization"]["scale"][0] > 0
    assert tflite_int8["output"]["quantization"]["zero-point"] is not None
    onnx_int8 = descriptions["int8.onnx"]
    assert onnx_int8["input"]["dtype"] == "float32" and onnx_int8["input"]["shape"][0] not in (1, 2)  # symbolic batch
    assert onnx_int8["input"]["qdq"]["scale"][0] > 0 and onnx_int8["quantization"]["format"] == "QDQ"
    report = (out / "report.md").read_text()
    assert all(f"| {v} | {f} |" in report for v in ("fp32", "int8", "student-fp32") for f in ("onnx", "tflite"))
    assert "int8.tflite" in done.stdout
    # LiteRT's native log line goes to the run's logs, not into the command's output
    assert "XNNPACK" not in done.stdout + done.stderr
    assert "XNNPACK" in (run_dir / "logs" / "native.log").read_text()

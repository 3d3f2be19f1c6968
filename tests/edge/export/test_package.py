"""The packaging pipeline: every variant compressed, exported, verified, described and reported; and the
``fedge package`` command end to end on a run made by ``fedge simulate`` (a real Flower simulation)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.compress.calibration import CalibrationSet
from edge.export import PackageInputs, PackageOptions, package_model
from edge.export.package import plan_steps
from tests.edge.compress.trained_digits import INPUT_SHAPE, digits_split, trained_digits_cnn

ROOT = Path(__file__).resolve().parents[3]
MANIFEST_KEYS = {"format", "dtype", "input", "output", "sha256", "size-bytes", "gzip-size-bytes", "metrics", "file"}


def _check_description(out: Path, description: dict) -> None:
    data = (out / description["file"]).read_bytes()
    assert description["sha256"] == hashlib.sha256(data).hexdigest()
    assert description["size-bytes"] == len(data)
    assert MANIFEST_KEYS <= set(description)
    assert json.loads((out / f"{description['file']}.json").read_text()) == description
    metrics = description["metrics"]
    assert 0 <= metrics["accuracy"] <= 1 and 0 <= metrics["top1-agreement"] <= 1
    assert metrics["latency-ms"] > 0 and metrics["latency-threads"] == 1


def test_package_builds_every_kind_verifies_and_reports(tmp_path):
    train, test = digits_split()
    inputs = PackageInputs(
        model=trained_digits_cnn(),
        model_name="digits-cnn",
        input_shape=INPUT_SHAPE,
        num_classes=10,
        test=test,
        tune=train,
        calibration=CalibrationSet.from_dataset(train, input_shape=INPUT_SHAPE, limit=64),
        source={"run-id": "unit"},
    )
    options = PackageOptions(
        formats=("onnx",),
        variants=("fp32", "int8", "pruned-int8", "channels", "student", "fp16"),
        sparsity=0.5,
        channel_amount=0.5,
        student_width=0.5,
        distill_epochs=3,
        latency_runs=10,
    )
    steps: list[str] = []
    result = package_model(inputs, tmp_path, options, on_step=steps.append)
    assert len(steps) == plan_steps(options)
    names = sorted(a["file"] for a in result.artifacts)
    assert names == ["channels-fp32.onnx", "fp32.onnx", "int8.onnx", "pruned-int8.onnx", "student-fp32.onnx"]
    assert any("fp16 is not built for onnx" in n for n in result.notes)
    for description in result.artifacts:
        _check_description(tmp_path, description)
        assert description["metrics"]["top1-agreement"] >= 0.95, description["file"]
    assert result.compression["pruned"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert result.artifact("pruned-int8", "onnx")["nonzero-parameters"] < result.artifact("fp32", "onnx")["parameters"]
    channels = result.artifact("channels-fp32", "onnx")
    assert channels["parameters"] < 0.5 * result.artifact("fp32", "onnx")["parameters"]
    assert channels["size-bytes"] < result.artifact("fp32", "onnx")["size-bytes"]
    student = result.compression["student"]
    assert student["student-parameters"] < student["teacher-parameters"]
    report = result.report.read_text()
    for name in names:
        variant = name.removesuffix(".onnx")
        assert f"| {variant} | onnx |" in report
    assert "layer shapes: features.0" in report
    assert result.plot is not None and result.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "package.json").read_text())["artifacts"] == [a["file"] for a in result.artifacts]


def _fedge(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "simulations.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        env={**os.environ, "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "COLUMNS": "200"},
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["package", "/no/such/run"], "run directory /no/such/run does not exist"),
        (["package", "/no/such/run", "--format", "coreml"], "unknown format 'coreml'"),
        (["package", "/no/such/run", "--variant", "int4"], "unknown variant 'int4'"),
        (["package", "/no/such/run", "--sparsity", "1.0"], "sparsity must be in [0, 1)"),
    ],
)
def test_package_command_reports_bad_input_in_one_line(args, message):
    done = _fedge(*args)
    assert done.returncode == 2, done.stderr
    assert message in " ".join(done.stderr.split())
    assert "Traceback" not in done.stderr


def test_package_command_explains_itself():
    done = _fedge("package", "--help")
    assert done.returncode == 0
    for option in ("--format", "--variant", "--sparsity", "--tune-on", "--calibration", "--student-width"):
        assert option in done.stdout


@pytest.mark.integration
def test_fedge_package_end_to_end_on_a_simulated_run(tmp_path):
    sim = _fedge(
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
    )
    assert sim.returncode == 0, sim.stderr[-3000:]
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    done = _fedge(
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
        _check_description(out, description)
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


def test_a_compressed_model_that_lost_accuracy_gets_a_note_with_a_remedy():
    from edge.export.package import _accuracy_notes

    train, test = digits_split()
    right = np.eye(10, dtype=np.float32)[test.y]
    wrong = np.roll(right, 1, axis=1)
    half = np.where(np.arange(len(test))[:, None] % 2 == 0, right, wrong)
    inputs = PackageInputs(
        model=trained_digits_cnn(),
        model_name="digits-cnn",
        input_shape=INPUT_SHAPE,
        num_classes=10,
        test=test,
        tune=train,
    )
    options = PackageOptions(variants=("fp32", "student", "pruned-int8"))
    notes = _accuracy_notes({"base": right, "student": half, "pruned": right}, inputs, options)
    assert len(notes) == 1
    assert "the student model reaches 0.50" in notes[0] and "--distill-epochs" in notes[0]


def _short_mnist_small_run(run_dir: Path) -> Path:
    """A finished run of mnist-small-cnn as the server leaves it (config.json, model.json, model.pt), trained for
    one epoch on 300 samples of tests/data/mnist-500 so the test stays short."""
    import tomllib

    import torch

    from shared_models.federation import FederatedData
    from shared_models.models import build_model
    from shared_models.training import train_epochs

    with (ROOT / "pyproject.toml").open("rb") as f:
        defaults = tomllib.load(f)["tool"]["flwr"]["app"]["config"]  # the run config's one source of defaults
    data = {"dataset": "mnist", "data-path": str(ROOT / "tests" / "data" / "mnist-500"), "test-fraction": 0.4}
    config = {**defaults, **data, "model": "mnist-small-cnn"}
    train, _ = FederatedData.from_run_config(config).split()
    model = build_model("mnist-small-cnn", input_shape=(1, 28, 28), num_classes=10, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train_epochs(
        model, train.loader(32, shuffle=True), optimizer=optimizer, criterion=torch.nn.CrossEntropyLoss(), epochs=1
    )
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(config))
    info = {"model": "mnist-small-cnn", "input-shape": [1, 28, 28], "num-classes": 10, **data}
    (run_dir / "model.json").write_text(json.dumps(info))
    torch.save(model.state_dict(), run_dir / "model.pt")
    return run_dir


def test_fedge_package_with_default_settings_works_on_a_mnist_small_cnn_run(tmp_path):
    """The default variants include a width student; distillation once had its own registry without
    mnist-small-cnn, and packaging such a run failed with 'no width multiplier is defined'."""
    from edge.export.cli import package
    from edge.export.package import DEFAULT_VARIANTS, parse_variant

    run_dir = _short_mnist_small_run(tmp_path / "run")
    package(run_dir)
    out = run_dir / "artifacts"
    built = json.loads((out / "package.json").read_text())
    assert {f.rsplit(".", 1)[0] for f in built["artifacts"]} == {parse_variant(v).name for v in DEFAULT_VARIANTS}
    assert {f.rsplit(".", 1)[1] for f in built["artifacts"]} == {"onnx", "tflite"}
    student = built["compression"]["student"]
    assert student["student"] == "mnist-small-cnn x0.4 width"
    assert student["student-parameters"] < student["teacher-parameters"] / 4
    for name in built["artifacts"]:
        _check_description(out, json.loads((out / f"{name}.json").read_text()))

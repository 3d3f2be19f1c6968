"""The packaging pipeline: every variant compressed, exported, verified, described and reported; and the
``fedge package`` command end to end on a run made by ``fedge simulate`` (a real Flower simulation)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge.compress.calibration import CalibrationSet
from edge.export import PackageInputs, PackageOptions, package_model
from edge.export.package import plan_steps
from tests.edge.compress.trained_digits import INPUT_SHAPE, digits_split, trained_digits_cnn
from tests.edge.export.checks import check_description, fedge

ROOT = Path(__file__).resolve().parents[3]


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
        check_description(tmp_path, description)
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
    done = fedge(*args)
    assert done.returncode == 2, done.stderr
    assert message in " ".join(done.stderr.split())
    assert "Traceback" not in done.stderr


def test_package_command_explains_itself():
    done = fedge("package", "--help")
    assert done.returncode == 0
    for option in ("--format", "--variant", "--sparsity", "--tune-on", "--calibration", "--student-width"):
        assert option in done.stdout


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
        check_description(out, json.loads((out / f"{name}.json").read_text()))

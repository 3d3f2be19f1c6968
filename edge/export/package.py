"""One pipeline from a trained float model to verified artifacts: compress, export, verify, time, describe, report.

What it builds are *variants* (a model kind and a precision, such as ``pruned-int8``; see
:mod:`edge.export.variants`), each in every asked format.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from edge.agent.protocol import FORMATS
from edge.compress.calibration import CalibrationSet
from edge.compress.distill import DEFAULT_STUDENT_WIDTH, distill, make_student
from edge.compress.errors import CalibrationError, DistillationError, MissingExtraError, PruningError
from edge.compress.pruning import FineTune, check_amount, count_nonzero, prune_channels, prune_unstructured
from edge.compress.quantize import quantize_onnx
from edge.export.artifact import describe_artifact, write_description
from edge.export.errors import UnknownFormatError
from edge.export.lineage import artifact_lineage
from edge.export.onnx_export import check_onnx, export_onnx
from edge.export.report import markdown_report, plot_accuracy_size
from edge.export.runtime import ArtifactRunner, measure_latency, open_artifact
from edge.export.tflite_export import export_tflite
from edge.export.variants import DEFAULT_VARIANTS, FORMAT_PRECISIONS, KINDS, Variant, parse_variant
from edge.export.verify import compare_logits
from shared_models.data import ArrayDataset
from shared_models.models import count_parameters
from shared_models.training import predict

# What exporting and verifying each format imports, and the extra that brings it.
FORMAT_TOOLS = {
    "onnx": (("onnx", "export"), ("onnxscript", "export"), ("onnxruntime", "export")),
    "tflite": (("litert_torch", "tflite"), ("ai_edge_litert", "tflite")),
}


@dataclass(frozen=True, kw_only=True)
class PackageOptions:
    """What to build and how. Defaults suit the registry's small models on a laptop."""

    formats: tuple[str, ...] = tuple(FORMATS)
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    sparsity: float = 0.5
    channel_amount: float = 0.5
    fine_tune_epochs: int = 1
    fine_tune_learning_rate: float = 0.01
    student: str | None = None
    student_width: float | None = None
    distill_epochs: int = 5
    temperature: float = 4.0
    alpha: float = 0.7
    latency_runs: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.formats:
            raise UnknownFormatError(f"no format asked for; choose from: {', '.join(FORMATS)}")
        for fmt in self.formats:
            if fmt not in FORMATS:
                raise UnknownFormatError(f"unknown format {fmt!r}; choose from: {', '.join(FORMATS)}")
        if not self.variants:
            raise UnknownFormatError("no variant asked for; e.g. fp32, int8, pruned-int8, student")
        for v in self.variants:
            parse_variant(v)
        check_amount(self.sparsity, "sparsity")
        check_amount(self.channel_amount, "the channel pruning amount")

    def check_tools(self) -> None:
        """Fail at once, before any training data is loaded, when a format's exporter or runtime is not installed."""
        import importlib.util

        for fmt in self.formats:
            for module, extra in FORMAT_TOOLS[fmt]:
                if importlib.util.find_spec(module) is None:
                    others = [f for f in FORMATS if f != fmt]
                    raise MissingExtraError(
                        f"{fmt} export needs {module}, which comes with the {extra!r} extra: "
                        f'pip install "fedge[{extra}]"'
                        + (f"; or package {others[0]} only: fedge package RUN_DIR -f {others[0]}" if others else "")
                    )

    @property
    def parsed(self) -> list[Variant]:
        seen: dict[str, Variant] = {}
        for v in self.variants:
            variant = parse_variant(v)
            seen.setdefault(variant.name, variant)
        return list(seen.values())

    @property
    def kinds(self) -> list[str]:
        return [k for k in KINDS if any(v.kind == k for v in self.parsed)]


@dataclass(frozen=True, kw_only=True)
class PackageInputs:
    """The trained float model and the data the pipeline works on."""

    model: nn.Module
    model_name: str
    input_shape: tuple[int, ...]
    num_classes: int
    test: ArrayDataset
    tune: ArrayDataset | None = None
    calibration: CalibrationSet | None = None
    source: dict[str, Any] = field(default_factory=dict)


@dataclass
class PackageResult:
    out_dir: Path
    artifacts: list[dict[str, Any]]
    compression: dict[str, Any]
    notes: list[str]
    report: Path
    plot: Path | None

    def artifact(self, variant: str, fmt: str) -> dict[str, Any]:
        for a in self.artifacts:
            if a["variant"] == variant and a["format"] == fmt:
                return a
        raise KeyError(f"{variant}.{fmt}")


def plan_steps(options: PackageOptions) -> int:
    """How many progress steps :func:`package_model` reports (for a progress bar's total)."""
    artifacts = sum(1 for v in options.parsed for f in options.formats if v.precision in FORMAT_PRECISIONS[f])
    return len([k for k in options.kinds if k != "base"]) + 2 * artifacts + 2


def _build_kinds(
    inputs: PackageInputs, options: PackageOptions, step: Callable[[str], None]
) -> tuple[dict[str, nn.Module], dict[str, Any]]:
    models: dict[str, nn.Module] = {"base": inputs.model.eval()}
    summary: dict[str, Any] = {}
    fine_tune = None
    if options.fine_tune_epochs > 0 and inputs.tune is not None:
        fine_tune = FineTune(
            data=inputs.tune,
            epochs=options.fine_tune_epochs,
            learning_rate=options.fine_tune_learning_rate,
            seed=options.seed,
        )
    if "pruned" in options.kinds:
        step(f"pruning {options.sparsity:.0%} of the weights (unstructured)")
        result = prune_unstructured(inputs.model, sparsity=options.sparsity, fine_tune=fine_tune)
        models["pruned"] = result.model
        summary["pruned"] = result.summary()
    if "channels" in options.kinds:
        step(f"pruning {options.channel_amount:.0%} of the channels")
        try:
            result = prune_channels(inputs.model, amount=options.channel_amount, fine_tune=fine_tune)
        except PruningError as e:
            if options.variants != DEFAULT_VARIANTS:  # asked for by name: say why it cannot be built
                raise
            summary["channels"] = {"skipped": str(e)}  # part of the defaults: build the rest, say why in a note
        else:
            models["channels"] = result.model
            summary["channels"] = result.summary()
    if "student" in options.kinds:
        step("distilling a student")
        if inputs.tune is None or len(inputs.tune) == 0:
            raise DistillationError("distillation needs data to train the student on; none was supplied")
        student = make_student(
            inputs.model_name,
            input_shape=inputs.input_shape,
            num_classes=inputs.num_classes,
            student=options.student,
            width=options.student_width,
            seed=options.seed,
            options=inputs.source.get("model-options"),
            project_dir=inputs.source.get("project-dir") or None,
        )
        result = distill(
            inputs.model,
            student,
            inputs.tune,
            temperature=options.temperature,
            alpha=options.alpha,
            epochs=options.distill_epochs,
            seed=options.seed,
            test=inputs.test,
        )
        models["student"] = result.student
        summary["student"] = {
            **result.summary(),
            "student": options.student
            or f"{inputs.model_name} x{options.student_width or DEFAULT_STUDENT_WIDTH:g} width",
        }
    return models, summary


def _export(
    model: nn.Module,
    variant: Variant,
    fmt: str,
    out: Path,
    inputs: PackageInputs,
    float_onnx: dict[str, Path],
    scratch: Path,
) -> dict[str, Any]:
    if fmt == "tflite":
        return export_tflite(
            model, out, input_shape=inputs.input_shape, precision=variant.precision, calibration=inputs.calibration
        )
    if variant.kind not in float_onnx:
        float_onnx[variant.kind] = export_onnx(
            model, scratch / f"{variant.kind}-float.onnx", input_shape=inputs.input_shape
        )
    source = float_onnx[variant.kind]
    if variant.precision == "fp32":
        out.write_bytes(source.read_bytes())
        return {"precision": "fp32", "exporter": "torch.onnx.export(dynamo=True)", "dynamic-batch": True}
    if variant.precision == "int8" and inputs.calibration is None:
        raise CalibrationError("static int8 needs calibration samples: the server's held-out split or a file")
    info = quantize_onnx(
        source, out, mode="static" if variant.precision == "int8" else "dynamic", calibration=inputs.calibration
    )
    check_onnx(out)
    return {"precision": variant.precision, "exporter": "torch.onnx.export(dynamo=True)", "dynamic-batch": True, **info}


#: A compressed float model this much less accurate than the original gets a note in the report.
ACCURACY_DROP_NOTE = 0.05

_REMEDY = {
    "pruned": "prune less (--sparsity) or fine-tune longer (--fine-tune-epochs)",
    "channels": "remove fewer channels (--channels) or fine-tune longer (--fine-tune-epochs)",
    "student": "distil longer (--distill-epochs), on more data (--tune-on pool) or use a wider student",
}


def _accuracy_notes(
    reference_logits: dict[str, np.ndarray], inputs: PackageInputs, options: PackageOptions
) -> list[str]:
    """Say so when a compressed model (before any quantization) lost much of the original's accuracy."""
    accuracy = {k: float((v.argmax(axis=1) == inputs.test.y).mean()) for k, v in reference_logits.items()}
    tune = len(inputs.tune) if inputs.tune is not None else 0
    return [
        f"the {kind} model reaches {accuracy[kind]:.3f} against the original's {accuracy['base']:.3f} "
        f"(tuned on {tune} samples): {_REMEDY[kind]}"
        for kind in options.kinds
        if kind != "base" and kind in accuracy and accuracy["base"] - accuracy[kind] > ACCURACY_DROP_NOTE
    ]


def package_model(
    inputs: PackageInputs,
    out_dir: str | Path,
    options: PackageOptions | None = None,
    *,
    on_step: Callable[[str], None] | None = None,
) -> PackageResult:
    """Build every variant in every format under ``out_dir``, verify and time each, and write the report."""
    options = options or PackageOptions()
    options.check_tools()
    step = on_step or (lambda _description: None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    models, compression = _build_kinds(inputs, options, step)
    reference_logits = {kind: predict(model, inputs.test.x) for kind, model in models.items()}
    original = reference_logits["base"].argmax(axis=1)
    notes = _accuracy_notes(reference_logits, inputs, options)
    if "skipped" in compression.get("channels", {}):
        notes.append(f"channels-* variants skipped: {compression['channels']['skipped']}")
    built: list[tuple[Variant, str, Path, ArtifactRunner, dict[str, Any], dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="fedge-package-") as tmp:
        float_onnx: dict[str, Path] = {}
        for variant in options.parsed:
            for fmt in options.formats:
                if variant.precision not in FORMAT_PRECISIONS[fmt]:
                    notes.append(f"{variant.name} is not built for {fmt}: {fmt} has no {variant.precision} here")
                    continue
                if variant.kind not in models:  # a default kind this model does not allow (noted above)
                    continue
                model = models[variant.kind]
                path = out_dir / f"{variant.name}{FORMATS[fmt]}"
                step(f"exporting {path.name}")
                quant = _export(model, variant, fmt, path, inputs, float_onnx, Path(tmp))
                step(f"verifying {path.name}")
                runner = open_artifact(path)
                logits = runner.run(inputs.test.x)
                check = compare_logits(logits, reference_logits[variant.kind], inputs.test.y)
                metrics = {
                    **check.as_dict(),
                    "agreement-with-original": float((logits.argmax(axis=1) == original).mean()),
                }
                built.append((variant, fmt, path, runner, quant, metrics))
    step(f"timing {len(built)} artifacts (1 thread, batch 1)")
    sample = np.ascontiguousarray(inputs.test.x[:1])
    latencies = measure_latency(
        {f"{v.name}.{fmt}": runner.single_call(sample) for v, fmt, _, runner, _, _ in built},
        runs=options.latency_runs,
    )
    step("writing the report")
    artifacts = []
    for variant, fmt, path, runner, quant, metrics in built:
        model = models[variant.kind]
        metrics["latency-ms"] = latencies[f"{variant.name}.{fmt}"] * 1e3
        metrics["latency-threads"] = 1
        description = describe_artifact(
            path,
            runner=runner,
            variant=variant.name,
            precision=variant.precision,
            model=inputs.model_name,
            parameters=count_parameters(model),
            nonzero_parameters=count_nonzero(model),
            quantization=quant,
            compression=compression.get(variant.kind),
            metrics=metrics,
            source=inputs.source,
        )
        if "lineage" in inputs.source:  # a run's model: its lineage and this artifact's recipe (fedge accept adds more)
            description["lineage"] = artifact_lineage(description)
        write_description(description, path)
        artifacts.append(description)
    title = f"fedge package: {inputs.model_name}" + (
        f" (run {inputs.source['run-id']})" if "run-id" in inputs.source else ""
    )
    report = out_dir / "report.md"
    report.write_text(markdown_report(artifacts, title=title, notes=notes, summary=compression), encoding="utf-8")
    plot = plot_accuracy_size(artifacts, out_dir / "accuracy-size.png", title=title) if artifacts else None
    (out_dir / "package.json").write_text(
        json.dumps(
            {
                "artifacts": [a["file"] for a in artifacts],
                "compression": compression,
                "notes": notes,
                "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.__dict__.items()},
                "source": inputs.source,
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    return PackageResult(out_dir, artifacts, compression, notes, report, plot)

"""Bring your own model: what the worked examples (simulations/examples/) get from fedge, measured end to end.

For each example project (iot-sensors: a 1-D CNN on smart-watch motion windows; hospitals: a residual MLP on the
heart-disease tables, one node per hospital), run as its own pyproject.toml describes:

- accuracy of the federated model trained with DP (the project's ε), of the same federation without DP, and of the
  same model trained centrally on the pooled training data for as many epochs (rounds x local epochs), all on the
  same held-out set: iot-sensors' TEST recordings (80 five-second windows no node trained on), hospitals' Cleveland
  table (the server's; no node holds it);
- the DP model packaged to fp32 and int8 in both formats (ONNX by onnxruntime, TFLite by LiteRT): each int8 file's
  size, accuracy on that held-out set and single-thread batch-1 latency against fp32 of the same format. Latency is
  the median of ``--timing-passes`` passes, each timing all four files interleaved (edge.export's measure_latency).

All three trainings and both formats run in the same process, one after another, on the same data.

    python -m simulations.benchmarks.byom
"""

from __future__ import annotations

import copy
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

from simulations.benchmarks.common import Row, base_parser, load_average, load_settings, write_results  # noqa: E402

NAME = "byom"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def held_out_set(example: str, experiment: Any) -> Any:
    """The set every model of ``example`` is measured on (see the module docstring)."""
    from shared_models.federation import FederatedData

    data = FederatedData.from_run_config(experiment.run_config)
    if example == "iot-sensors":
        test_file = EXAMPLES / example / "data" / "BasicMotions_TEST.ts"
        options = {**data.loader_options, "stride": data.loader_options.get("window", 50)}  # no overlap
        return data.loader.load(str(test_file), options)
    return data.server_test_set()


def pooled_training_set(experiment: Any) -> Any:
    """Every node's training data in one set: what a central trainer would hold."""
    import numpy as np

    from shared_models.data import ArrayDataset
    from shared_models.federation import FederatedData

    data = FederatedData.from_run_config(experiment.run_config)
    if data.partitioner != "natural":
        return data.split()[0]
    test = data.server_test_set()
    parts = [
        data.client_train_set(0, 1, node_data_path=p.strip()).with_classes(test.num_classes)
        for p in str(experiment.run_config["node-data-paths"]).split(",")
        if p.strip()
    ]
    x = np.concatenate([p.x for p in parts])
    y = np.concatenate([p.y for p in parts])
    return ArrayDataset("pooled", x, y, test.num_classes)


def train_centrally(experiment: Any, pool: Any, num_classes: int) -> Any:
    """The project's model trained on the pooled data with the clients' optimizer settings, no DP, for rounds x
    local-epochs epochs."""
    import torch

    from shared_models.registry import ModelConfig
    from shared_models.training import train_epochs

    cfg = experiment.run_config
    torch.manual_seed(int(cfg["seed"]))
    model = ModelConfig.from_run_config({**cfg, "dp": False}).build(pool.input_shape, num_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=float(cfg["learning-rate"]), momentum=float(cfg["momentum"]))
    epochs = int(cfg["num-server-rounds"]) * int(cfg["local-epochs"])
    loader = pool.loader(int(cfg["batch-size"]), shuffle=True, seed=int(cfg["seed"]))
    train_epochs(model, loader, optimizer=optimizer, criterion=torch.nn.CrossEntropyLoss(), epochs=epochs)
    return model.eval()


def simulate(experiment: Any, runs_dir: Path, **settings: Any) -> str:
    from simulations.experiment import apply_settings
    from simulations.simulate import run_experiment

    run = copy.deepcopy(experiment)
    apply_settings(run, {"runs-dir": str(runs_dir), "progress": False, **settings})
    return run_experiment(run)["run-dir"]


def package_and_time(run_dir: str, test: Any, out: Path, *, passes: int, runs: int) -> dict[str, dict[str, float]]:
    """fp32 and int8 of the run's model in both formats: size, accuracy on ``test``, latency (median of passes)."""
    from edge.compress.calibration import CalibrationSet
    from edge.export.package import PackageInputs, PackageOptions, package_model
    from edge.export.run_source import load_run_model, run_federated_data
    from edge.export.runtime import measure_latency, open_artifact

    model, info, config = load_run_model(run_dir)
    calibration_source = run_federated_data(info, config).server_test_set()  # never the measured set
    input_shape = tuple(int(d) for d in info["input-shape"])
    inputs = PackageInputs(
        model=model,
        model_name=str(info["model"]),
        input_shape=input_shape,
        num_classes=int(info["num-classes"]),
        test=test,
        tune=calibration_source,
        calibration=CalibrationSet.from_dataset(calibration_source, input_shape=input_shape),
        source={"run-dir": run_dir},
    )
    result = package_model(inputs, out, PackageOptions(variants=("fp32", "int8"), latency_runs=runs))
    sample = test.x[:1].copy()
    calls = {
        f"{a['variant']}.{a['format']}": open_artifact(out / a["file"]).single_call(sample) for a in result.artifacts
    }
    timed = [measure_latency(calls, runs=runs) for _ in range(passes)]
    return {
        name: {
            "size": float(a["size-bytes"]),
            "accuracy": float(a["metrics"]["accuracy"]),
            "latency_ms": statistics.median(t[name] for t in timed) * 1e3,
        }
        for a in result.artifacts
        for name in [f"{a['variant']}.{a['format']}"]
    }


def measure_example(example: str, args: Any, work: Path) -> tuple[list[Row], dict[str, Any]]:
    from edge.export.run_source import load_run_model
    from shared_models.training import evaluate
    from simulations.experiment import apply_settings, load_experiment, resolve_paths

    experiment = load_experiment(str(EXAMPLES / example))
    if args.rounds:
        apply_settings(experiment, {"num-server-rounds": args.rounds})
    resolve_paths(experiment)  # the project's data paths, from its directory
    cfg = experiment.run_config
    test = held_out_set(example, experiment)
    started = time.monotonic()
    dp_run = simulate(experiment, work / "runs", dp=True)
    plain_run = simulate(experiment, work / "runs", dp=False)
    pool = pooled_training_set(experiment)
    central = evaluate(train_centrally(experiment, pool, test.num_classes), test).accuracy
    accuracy = {
        name: evaluate(load_run_model(run)[0], test).accuracy for name, run in (("dp", dp_run), ("plain", plain_run))
    }
    artifacts = package_and_time(dp_run, test, work / f"{example}-artifacts", passes=args.timing_passes, runs=args.runs)
    eps = float(cfg["target-epsilon"])
    rows = [
        Row.compare(
            f"{example}: federated, DP (ε ≤ {eps:g}), accuracy", accuracy["dp"], "accuracy", "central", central
        ),
        Row.compare(f"{example}: federated, no DP, accuracy", accuracy["plain"], "accuracy", "central", central),
        Row.compare(
            f"{example}: federated, DP, accuracy", accuracy["dp"], "accuracy", "federated, no DP", accuracy["plain"]
        ),
    ]
    for fmt, label in (("onnx", "ONNX (onnxruntime)"), ("tflite", "TFLite (LiteRT)")):
        int8, fp32 = artifacts[f"int8.{fmt}"], artifacts[f"fp32.{fmt}"]
        rows += [
            Row.compare(f"{example}: int8 {label} size", int8["size"], "bytes", f"fp32 {fmt}", fp32["size"]),
            Row.compare(
                f"{example}: int8 {label} accuracy", int8["accuracy"], "accuracy", f"fp32 {fmt}", fp32["accuracy"]
            ),
            Row.compare(
                f"{example}: int8 {label} latency", int8["latency_ms"], "ms", f"fp32 {fmt}", fp32["latency_ms"]
            ),
        ]
    settings = {
        "rounds": cfg["num-server-rounds"],
        "local-epochs": cfg["local-epochs"],
        "nodes": experiment.num_supernodes,
        "target-epsilon": eps,
        "held-out samples": len(test),
        "pooled training samples": len(pool),
        "central epochs": int(cfg["num-server-rounds"]) * int(cfg["local-epochs"]),
        "seconds": round(time.monotonic() - started, 1),
        "artifacts": artifacts,
    }
    return rows, settings


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(NAME, __doc__.split("\n\n")[0])
    parser.add_argument("--examples", nargs="+", default=["iot-sensors", "hospitals"], help="which examples")
    parser.add_argument("--rounds", type=int, default=0, help="rounds per federation (default: the project's)")
    parser.add_argument("--timing-passes", type=int, default=5, help="latency passes (the median is reported)")
    parser.add_argument("--runs", type=int, default=200, help="timed calls per artifact per pass")
    args = parser.parse_args(argv)
    load_at_start = load_average()
    rows: list[Row] = []
    settings: dict[str, Any] = {"timing passes": args.timing_passes, "timed calls per pass": args.runs}
    with tempfile.TemporaryDirectory(prefix="fedge-byom-") as tmp:
        for example in args.examples:
            example_rows, settings[example] = measure_example(example, args, Path(tmp))
            rows += example_rows
    write_results(NAME, rows, out=args.out, settings={**settings, **load_settings(load_at_start)})


if __name__ == "__main__":
    main()

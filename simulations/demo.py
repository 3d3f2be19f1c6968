"""``fedge demo``: the whole pipeline on one machine, from federated training to telemetry from devices.

1. a DP federated simulation (Flower + Opacus) on scikit-learn's digits: :func:`simulations.simulate.run_experiment`;
   then the non-private reference: the same job (model, clients, rounds, epochs, batches) with ``dp = false``, a
   second simulation recorded as its own run next to it (``runs/<run-id>-no-dp/``);
2. compress and export the global model (fp32 and int8; ONNX and TFLite), each artifact verified: :mod:`edge.export`;
3. a signing key; the embedded broker (amqtt) as its own process; a fleet collector (SQLite);
4. device agents as separate processes (``python -m edge.agent``), runtimes in turn (onnxruntime, LiteRT), each
   running inference on all the held-out samples the model never trained or calibrated on, every report window;
5. rollout of the fp32 model (version 1) to every device, then a staged rollout of the int8 model (version 2):
   canaries first, judged against their own fp32 reports, then everyone (or a rollback command);
6. telemetry for a few seconds, the fleet table, and what each stage bought (:func:`demo_quality`): the DP model's
   accuracy at its (ε, δ) beside the reference's, int8 against fp32 in size and latency per runtime, the devices'
   accuracy with its standard error, the canary verdict with its report counts. The figures are read back from the
   run's own files and recorded in ``edge/demo.json`` (``quality``).

Everything goes under ``runs/<run-id>/`` (the simulation's run record, ``artifacts/``, and ``edge/``: keys, device
stores, logs, ``fleet.db``, ``rollouts.json``, ``fleet.json``, ``demo.json``). Every process it starts is stopped in
a ``finally``, so also on Ctrl-C (and on SIGTERM, which the command turns into Ctrl-C).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from edge.agent.cli import agent_command
from edge.delivery.publisher import derive_model_id
from edge.export.native_log import native_stderr_to
from shared_models.errors import FedgeError
from shared_models.run_dir import RunDir

INT8, FP32 = "int8", "fp32"

#: The non-private reference is the demo's job with DP off and this learning rate: without DP-SGD's clipping the
#: one DP needs (2.0) diverges (accuracy 0.10 in a plain-loop emulation on the same partitions; 1.0 diverges too,
#: 0.3, 0.5 and 0.7 reach 0.94-0.96). Everything else (model, clients, rounds, epochs, batches, decay) is the same.
REFERENCE_SETTINGS: dict[str, Any] = {"dp": False, "learning-rate": 0.5}
#: the reference's run id is the DP run's with this suffix, in the same runs directory
REFERENCE_SUFFIX = "-no-dp"


class DemoError(FedgeError):
    """The demo cannot go on (bad options, a stage that did not finish)."""


@dataclass(frozen=True, kw_only=True)
class DemoOptions:
    experiment: str = "digits-dp"
    num_clients: int | None = None
    rounds: int | None = None
    devices: int = 4
    runtimes: tuple[str, ...] = ("onnx", "tflite")
    canary_fraction: float = 0.25
    telemetry_s: float = 8.0
    report_interval_s: float = 1.0
    port: int | None = None
    runs_dir: Path = Path("runs")
    from_run: Path | None = None
    latency_runs: int = 1000  # median of interleaved calls: a call takes tens of microseconds, a busy CPU skews a few
    chunk_size: int = 16 * 1024
    timeout_s: float = 90.0
    verbose: bool = False
    #: serve the dashboard (``fedge ui``) on this port while the demo runs
    ui: bool = False
    ui_port: int = 8765

    def __post_init__(self) -> None:
        if self.devices < 1:
            raise DemoError("--devices must be at least 1")
        if not self.runtimes or any(r not in ("onnx", "tflite") for r in self.runtimes):
            raise DemoError(f"--runtimes must name onnx and/or tflite, got {','.join(self.runtimes) or 'nothing'}")
        if not 0 <= self.canary_fraction < 1:
            raise DemoError("--canary must be in [0, 1)")
        if self.telemetry_s < 0 or self.report_interval_s <= 0:
            raise DemoError("--telemetry-seconds must be >= 0 and --interval > 0")


def _stage(console: Console, number: int, text: str) -> None:
    console.rule(f"[bold][{number}/6][/] {text}", align="left")


def _simulate(options: DemoOptions, settings: dict[str, Any]) -> dict[str, Any]:
    """The demo's experiment with ``settings`` applied, run in Flower's simulation engine; the server's summary."""
    from simulations.experiment import apply_settings, load_experiment
    from simulations.simulate import run_experiment

    experiment = load_experiment(options.experiment)
    apply_settings(experiment, {"num-server-rounds": options.rounds, **settings})
    if options.num_clients is not None:
        experiment.num_supernodes = options.num_clients
    return run_experiment(experiment, verbose=options.verbose)


def train(options: DemoOptions, console: Console) -> Path:
    """Stage 1: the federated simulation; returns its run directory."""
    from shared_models.run_config import mint_run_id

    summary = _simulate(options, {"runs-dir": options.runs_dir, "run-id": mint_run_id("demo")})
    console.print(
        f"global model: accuracy {summary['initial-accuracy']:.3f} -> {summary['final-accuracy']:.3f} "
        f"on the server's held-out split"
    )
    return Path(summary["run-dir"])


def reference_dir(run_dir: Path) -> Path:
    """Where the non-private reference of the DP run in ``run_dir`` is recorded: a run of its own next to it."""
    return run_dir.parent / f"{run_dir.name}{REFERENCE_SUFFIX}"


def _finished(run_dir: Path) -> bool:
    run = RunDir(run_dir)
    return not run.missing(run.config, run.metrics, run.model)


def train_reference(run_dir: Path, options: DemoOptions, console: Console) -> Path | None:
    """Stage 1, second half: the same job without DP (:data:`REFERENCE_SETTINGS`), a second simulation whose run
    record goes next to the DP run's; with ``--from-run``, the reference an earlier demo ran for it, if any."""
    reference = reference_dir(run_dir)
    if _finished(reference):
        console.print(f"non-private reference: reusing {reference}")
        return reference
    if options.from_run is not None:
        console.print(
            f"[yellow]no non-private reference next to {run_dir} ({reference.name}); a demo that trains runs one[/]"
        )
        return None
    changed = ", ".join(f"{k} = {str(v).lower() if isinstance(v, bool) else v}" for k, v in REFERENCE_SETTINGS.items())
    console.print(f"non-private reference: the same job with {changed} (no clipping, no noise)")
    summary = _simulate(options, {"runs-dir": run_dir.parent, "run-id": reference.name, **REFERENCE_SETTINGS})
    console.print(
        f"reference model: accuracy {summary['initial-accuracy']:.3f} -> {summary['final-accuracy']:.3f} "
        "on the same held-out split"
    )
    return Path(summary["run-dir"])


def package(
    run_dir: Path, options: DemoOptions, console: Console
) -> tuple[dict[str, dict[str, Path]], list[Path], str]:
    """Stage 2: fp32 and int8 artifacts in both formats, verified; the held-out samples for the devices.

    Returns ``({precision: {format: path}}, one samples file per device, model id)``. Calibration uses one half of
    the server's held-out split; the devices (and the reported accuracy) use the other half, every device all of it,
    so that each report window's accuracy rests on every one of those samples (the standard error is printed).
    """
    import numpy as np

    from edge.export.package import PackageOptions
    from edge.export.run_source import run_package_inputs

    inputs = run_package_inputs(run_dir, tune_on="held-out", calibration_size=256, seed=0)
    test = inputs.test
    formats = tuple(f for f in ("onnx", "tflite") if f in options.runtimes)
    package_options = PackageOptions(
        formats=formats, variants=(FP32, INT8), fine_tune_epochs=0, latency_runs=options.latency_runs
    )
    run = RunDir(run_dir)
    model_id = derive_model_id(str(run.read_model_info()["model"]))
    paths = {p: {f: run.artifacts / f"{p}.{f}" for f in formats} for p in (FP32, INT8)}
    wanted = [path for by_format in paths.values() for path in by_format.values()]
    if options.from_run is not None and all(p.is_file() and Path(f"{p}.json").is_file() for p in wanted):
        console.print(f"reusing the artifacts in {run.artifacts} (delete them to export again)")
    else:
        with native_stderr_to(run.edge / "logs" / "package.log", enabled=not options.verbose):
            _export(inputs, package_options, run_dir, console)
    for path in wanted:
        if not path.is_file():
            raise DemoError(f"packaging did not write {path}")
    if len(test) == 0:
        raise DemoError("the server's held-out split left no samples for the devices; raise test-fraction")
    path = run.edge / "samples" / "held-out.npz"  # every device runs all of them: one file
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=test.x.astype(np.float32), y=test.y.astype(np.int64))
    return paths, [path] * options.devices, model_id


def _export(inputs: Any, package_options: Any, run_dir: Path, console: Console) -> None:
    from edge.export.package import package_model, plan_steps

    total = plan_steps(package_options)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console, transient=False
    ) as progress:
        task = progress.add_task("packaging", total=total)
        result = package_model(
            inputs,
            RunDir(run_dir).artifacts,
            package_options,
            on_step=lambda d: progress.update(task, advance=1, description=d),
        )
        progress.update(task, completed=total, description="artifacts verified")
    for a in result.artifacts:
        console.print(
            f"  {a['file']:<14} {a['size-bytes'] / 1024:7.1f} KiB  accuracy {a['metrics']['accuracy']:.4f}  "
            f"agreement with float {a['metrics']['top1-agreement']:.4f}"
        )


class AgentProcesses:
    """The device agents, one process each (``python -m edge.agent``), logs in ``edge/logs/``."""

    def __init__(self) -> None:
        self.processes: dict[str, subprocess.Popen] = {}
        self._logs: list[Any] = []

    def start(
        self,
        device_id: str,
        *,
        runtime: str,
        broker_url: str,
        store: Path,
        model_id: str,
        trust: Path,
        samples: Path,
        samples_per_report: int,
        interval: float,
        log: Path,
    ) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        out = open(log, "ab")  # noqa: SIM115 (closed in stop)
        self._logs.append(out)
        self.processes[device_id] = subprocess.Popen(
            agent_command(
                broker_url=broker_url,
                device_id=device_id,
                store=store,
                model_ids=[model_id],
                runtime=runtime,
                trust=[trust],
                data=samples,
                interval=interval,
                samples=samples_per_report,
            ),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def dead(self) -> dict[str, int]:
        return {d: p.returncode for d, p in self.processes.items() if p.poll() is not None}

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (the agent publishes its clean "disconnected" state), then SIGKILL for any that hangs."""
        for p in self.processes.values():
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + timeout
        for p in self.processes.values():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for f in self._logs:
            f.close()
        self._logs.clear()


def _rollout(collector, publisher, models, devices, policy, console: Console, label: str):
    from edge.delivery.rollout import StagedRollout

    report = StagedRollout(
        publisher=publisher,
        collector=collector,
        models=models,
        policy=policy,
        progress=lambda message: console.print(f"  {message}"),
    ).run(devices)
    applied = len(report.applied)
    console.print(
        f"  {label}: [bold]{report.status}[/] ({applied}/{len(devices)} applied in {report.seconds:.1f} s)"
        + (f"; canary verdict: {report.verdict}" if report.verdict else "")
    )
    return report


def _record_rollouts(edge_dir: Path, reports: list) -> None:
    """``edge/rollouts.json`` after each rollout, so the dashboard shows one as soon as it ends."""
    from shared_models.run_dir import write_json

    write_json(edge_dir / "rollouts.json", [r.to_dict() for r in reports])


def _sample_count(path: Path) -> int:
    import numpy as np

    with np.load(path, allow_pickle=False) as samples:
        return len(samples["y"])


def standard_error(accuracy: float, samples: int) -> float:
    """The standard error of an accuracy measured on ``samples`` independent samples: sqrt(p (1 - p) / n)."""
    return math.sqrt(max(accuracy * (1.0 - accuracy), 0.0) / max(samples, 1))


def _final_accuracy(run_dir: Path) -> float:
    return float(RunDir(run_dir).read_metrics()[-1]["central-accuracy"])


def demo_quality(
    run_dir: Path,
    reference: Path | None,
    *,
    artifacts: dict[str, dict[str, Path]],
    devices: list[dict[str, Any]],
    rollout: Any,
    samples_per_report: int,
) -> dict[str, Any]:
    """What each stage bought, from the run's own files: the DP model's accuracy at its (ε, δ) and the non-private
    reference's (``metrics.json``, ``privacy.json`` of each run), int8 against fp32 per runtime (each artifact's
    description: size, latency at batch 1 on 1 thread, accuracy), each device's last report window with its
    standard error, and the int8 rollout's canary verdict with the report counts it rests on."""
    run = RunDir(run_dir)
    privacy = run.read_privacy()
    config = run.read_config()
    training = {
        "accuracy": _final_accuracy(run_dir),
        "epsilon": float(privacy.get("max-epsilon") or 0.0),
        "delta": float(privacy.get("delta") or config.get("target-delta", 0.0)),
        "target-epsilon": float(privacy.get("target-epsilon") or config.get("target-epsilon", 0.0)),
        "dp": bool(privacy.get("enabled", config.get("dp"))),
        "clients": len(privacy.get("clients", {})),
        "rounds": len(run.read_metrics()) - 1,
        "run": str(run_dir),
    }
    reference_record = None
    if reference is not None:
        reference_config = RunDir(reference).read_config()
        reference_record = {
            "accuracy": _final_accuracy(reference),
            "dp": bool(reference_config.get("dp")),
            "learning-rate": reference_config.get("learning-rate"),
            "rounds": len(RunDir(reference).read_metrics()) - 1,
            "run": str(reference),
        }
    per_runtime = {}
    for fmt in artifacts[FP32]:
        fp32, int8 = (json.loads(Path(f"{artifacts[p][fmt]}.json").read_text(encoding="utf-8")) for p in (FP32, INT8))
        per_runtime[fmt] = {
            "fp32-bytes": fp32["size-bytes"],
            "int8-bytes": int8["size-bytes"],
            "size-ratio": int8["size-bytes"] / fp32["size-bytes"],
            "fp32-latency-ms": fp32["metrics"]["latency-ms"],
            "int8-latency-ms": int8["metrics"]["latency-ms"],
            "latency-ratio": int8["metrics"]["latency-ms"] / fp32["metrics"]["latency-ms"],
            "fp32-accuracy": fp32["metrics"]["accuracy"],
            "int8-accuracy": int8["metrics"]["accuracy"],
        }
    per_device = {}
    for row in devices:
        accuracy, inferences = row.get("accuracy"), row.get("inferences") or 0
        per_device[row["device_id"]] = {
            "runtime": row.get("runtime"),
            "version": row.get("version"),
            "accuracy": accuracy,
            "inferences": inferences,
            "standard-error": None if accuracy is None else standard_error(accuracy, inferences),
        }
    baseline, canary = rollout.baseline or {}, rollout.canary_stats or {}
    return {
        "training": training,
        "reference": reference_record,
        "artifacts": per_runtime,
        "devices": {"samples-per-report": samples_per_report, "per-device": per_device},
        "canary": {
            "status": rollout.status,
            "verdict": rollout.verdict,
            "canaries": list(rollout.canaries),
            "reports": canary.get("reports", 0),
            "inferences": canary.get("labelled", 0),
            "baseline-reports": baseline.get("reports", 0),
            "baseline-inferences": baseline.get("labelled", 0),
        },
    }


def print_quality(quality: dict[str, Any], console: Console) -> None:
    """The lines that say what each stage bought (tests/integration/test_demo.py reads them back)."""

    def say(text: str) -> None:
        console.print(text, soft_wrap=True, highlight=False)

    console.rule("[bold]what each stage bought[/]", align="left")
    t, ref = quality["training"], quality["reference"]
    if t["dp"]:
        say(
            f"DP model: accuracy {t['accuracy']:.3f} at ε = {t['epsilon']:.3f}, δ = {t['delta']:g} "
            f"(each client, whole run; {t['clients']} clients x {t['rounds']} rounds)"
        )
    else:
        say(f"model (no DP): accuracy {t['accuracy']:.3f} ({t['clients']} clients x {t['rounds']} rounds)")
    if ref is not None:
        say(
            f"non-private reference: accuracy {ref['accuracy']:.3f} "
            f"(same job, dp = false, learning rate {ref['learning-rate']:g})"
        )
    for fmt, a in quality["artifacts"].items():
        say(
            f"{fmt} int8/fp32: size {a['size-ratio']:.3f}x ({a['int8-bytes'] / 1024:.1f} / "
            f"{a['fp32-bytes'] / 1024:.1f} KiB), latency {a['latency-ratio']:.3f}x "
            f"({a['int8-latency-ms']:.4f} / {a['fp32-latency-ms']:.4f} ms, batch 1, 1 thread)"
        )
    devices = quality["devices"]
    say(f"devices: every report window runs all {devices['samples-per-report']} evaluation samples")
    for device, d in devices["per-device"].items():
        if d["accuracy"] is not None:
            say(
                f"  {device} ({d['runtime']}, v{d['version']}): accuracy {d['accuracy']:.3f} "
                f"± {d['standard-error']:.3f} (standard error, {d['inferences']} samples)"
            )
    c = quality["canary"]
    say(f"canary verdict ({', '.join(c['canaries']) or 'no canaries'}): {c['verdict'] or c['status']}")
    say(
        f"  on {c['reports']} reports ({c['inferences']} labelled inferences) against "
        f"{c['baseline-reports']} reports ({c['baseline-inferences']}) on the previous version"
    )


def _run_with_dashboard(options: DemoOptions, console: Console) -> dict[str, Any]:
    """The demo with the dashboard served over its runs directory while it runs (``fedge demo --ui``)."""
    from dataclasses import replace

    from simulations.dashboard.server import DashboardServer

    runs_dir = options.from_run.parent if options.from_run is not None else options.runs_dir
    runs_dir.mkdir(parents=True, exist_ok=True)
    with DashboardServer(runs_dir, port=options.ui_port) as dashboard:
        console.print(f"[bold]dashboard:[/] {dashboard.url} (live while the demo runs)")
        summary = run_demo(replace(options, ui=False), console=console)
        console.print(f"the dashboard stops with the demo; look again with: fedge ui --runs {runs_dir}")
    return summary


def run_demo(options: DemoOptions, *, console: Console | None = None) -> dict[str, Any]:
    """Run the demo; return its summary (also written to ``runs/<run-id>/edge/demo.json``)."""
    if options.ui:
        return _run_with_dashboard(options, console or Console())
    from edge.delivery.brokers import EmbeddedBrokerProcess, free_port
    from edge.delivery.cli import fleet_table
    from edge.delivery.client import ServerClient
    from edge.delivery.collector import FleetCollector, FleetStore
    from edge.delivery.keys import SigningKey, write_keypair
    from edge.delivery.publisher import ModelPublisher, load_artifact, sign_artifact
    from edge.delivery.rollout import RolloutPolicy

    console = console or Console()
    timings: dict[str, float] = {}
    started = time.monotonic()

    _stage(console, 1, "federated training with differential privacy (Flower + Opacus)")
    if options.from_run is not None:
        run_dir = Path(options.from_run)
        finished = RunDir(run_dir)
        missing = finished.missing(finished.config, finished.model_info, finished.model)
        if missing:
            raise DemoError(
                f"--from-run {run_dir} is not a finished fedge run (no {', '.join(missing)}); give a directory "
                "under runs/ that `fedge simulate` wrote"
            )
        console.print(f"using the finished run {run_dir}")
    else:
        run_dir = train(options, console)
    reference = train_reference(run_dir, options, console)
    timings["train_s"] = time.monotonic() - started
    edge_dir = RunDir(run_dir).edge
    if edge_dir.exists():  # a previous demo on this run: its devices' stores would refuse versions 1 and 2 again
        if not any((edge_dir / name).exists() for name in ("demo.json", "fleet.db", "devices", "keys")):
            raise DemoError(
                f"{edge_dir} exists but is not a previous demo's output; move it away and run the demo again"
            )
        console.print(f"replacing the previous demo's {edge_dir}")
        shutil.rmtree(edge_dir)

    _stage(console, 2, "compress and export (fp32, int8; ONNX, TFLite), each artifact verified")
    t = time.monotonic()
    artifacts, samples, model_id = package(run_dir, options, console)
    samples_per_report = _sample_count(samples[0])
    timings["package_s"] = time.monotonic() - t

    key = SigningKey.generate()
    _, public = write_keypair(key, edge_dir / "keys" / "server", overwrite=True)
    port = options.port or free_port()
    broker_url = f"mqtt://127.0.0.1:{port}"
    runtimes = {f"dev-{i + 1:02d}": options.runtimes[i % len(options.runtimes)] for i in range(options.devices)}
    devices = sorted(runtimes)

    broker = EmbeddedBrokerProcess(port, log_file=edge_dir / "logs" / "broker.log")
    agents = AgentProcesses()
    collector = None
    client = None
    reports = []
    pids: dict[str, int] = {}
    try:
        _stage(console, 3, f"embedded MQTT broker on {broker_url}, fleet collector")
        t = time.monotonic()
        broker.start(timeout=30)
        pids["broker"] = broker.process.pid
        console.print(f"  broker: amqtt (pid {broker.process.pid}, its own process)")
        collector = FleetCollector(broker.address(), FleetStore(edge_dir / "fleet.db"), client_id="demo-collector")
        collector.start(timeout=15)
        client = ServerClient("demo-publisher", broker.address()).connect(timeout=15)
        publisher = ModelPublisher(client, key, timeout=options.timeout_s)

        _stage(console, 4, f"{len(devices)} device agents as separate processes")
        for d, device_samples in zip(devices, samples, strict=True):
            agents.start(
                d,
                runtime=runtimes[d],
                broker_url=broker_url,
                store=edge_dir / "devices" / d,
                model_id=model_id,
                trust=public,
                samples=device_samples,
                samples_per_report=samples_per_report,
                interval=options.report_interval_s,
                log=edge_dir / "logs" / f"{d}.log",
            )
            pids[d] = agents.processes[d].pid
            console.print(f"  {d}: {runtimes[d]} (pid {agents.processes[d].pid})")
        console.print(f"  each runs all {samples_per_report} evaluation samples every {options.report_interval_s:g} s")
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as p:
            task = p.add_task("waiting for the agents' birth messages", total=None)
            ok = collector.wait_until(
                lambda s: (
                    len([r for r in s.devices() if r.get("state") in ("waiting", "ready")]) >= len(devices)
                    or bool(agents.dead())
                ),
                options.timeout_s,
            )
            p.update(task, description=f"{len(collector.store.devices())} agents online")
        if agents.dead() or not ok:
            raise DemoError(f"agents did not come online (exited: {agents.dead() or 'none'}); see {edge_dir / 'logs'}")
        timings["start_s"] = time.monotonic() - t

        _stage(console, 5, "rollout: fp32 (v1) to every device, then int8 (v2) canaries first")
        t = time.monotonic()
        signed = {}
        for version, precision in ((1, FP32), (2, INT8)):
            signed[precision] = {
                fmt: sign_artifact(
                    load_artifact(path, model_id=model_id, version=version), key, chunk_size=options.chunk_size
                )
                for fmt, path in artifacts[precision].items()
            }
        policy = RolloutPolicy(
            canary_fraction=0.0, apply_timeout_s=options.timeout_s, health_timeout_s=options.timeout_s
        )
        reports.append(_rollout(collector, publisher, signed[FP32], devices, policy, console, "fp32 v1"))
        _record_rollouts(edge_dir, reports)
        if reports[-1].status != "completed":
            raise DemoError(f"the fp32 rollout did not complete: {reports[-1].to_dict()}")
        # the canaries need reports on v1 to be judged against
        collector.wait_until(lambda s: all(s.reports_since(d, 1, 0) >= 2 for d in devices), options.timeout_s)
        policy = RolloutPolicy(
            canary_fraction=options.canary_fraction,
            health_reports=2,
            apply_timeout_s=options.timeout_s,
            health_timeout_s=options.timeout_s,
        )
        reports.append(_rollout(collector, publisher, signed[INT8], devices, policy, console, "int8 v2"))
        _record_rollouts(edge_dir, reports)
        timings["rollout_s"] = time.monotonic() - t

        _stage(console, 6, f"telemetry for {options.telemetry_s:g} s")
        t = time.monotonic()
        with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console) as p:
            task = p.add_task("collecting telemetry", total=options.telemetry_s)
            end = time.monotonic() + options.telemetry_s
            while time.monotonic() < end:
                time.sleep(0.25)
                p.update(
                    task,
                    completed=min(options.telemetry_s, options.telemetry_s - (end - time.monotonic())),
                    description=f"collecting telemetry ({collector.received} messages)",
                )
        timings["telemetry_s"] = time.monotonic() - t
        console.print(fleet_table(collector.store.devices(), title="the fleet"))
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted: stopping the broker and {len(agents.processes)} agents[/]")
        raise
    finally:
        agents.stop()
        if client is not None:
            client.close()
        if collector is not None:
            collector.wait_until(lambda s: all(r.get("state") in ("disconnected", "lost") for r in s.devices()), 5)
            collector.stop()
        broker.stop()

    store = collector.store
    rows = store.devices()
    sequence = store.sequence_report()
    console.print(
        f"telemetry: {sequence['received']} messages received, {sequence['lost']} lost, "
        f"{sequence['duplicates']} duplicates dropped"
    )
    on_int8 = [r["device_id"] for r in rows if r.get("version") == 2]
    quality = demo_quality(
        run_dir,
        reference,
        artifacts=artifacts,
        devices=rows,
        rollout=reports[-1],
        samples_per_report=samples_per_report,
    )
    print_quality(quality, console)
    timings["total_s"] = time.monotonic() - started
    summary = {
        "run_dir": str(run_dir),
        "broker": broker_url,
        "devices": runtimes,
        "pids": pids,
        "model_id": model_id,
        "artifacts": {p: {f: str(path) for f, path in by.items()} for p, by in artifacts.items()},
        "rollouts": [r.to_dict() for r in reports],
        "on_int8": on_int8,
        "telemetry": sequence,
        "quality": quality,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()},
        "seconds": {k: round(v, 2) for k, v in timings.items()},
    }
    (edge_dir / "rollouts.json").write_text(json.dumps(summary["rollouts"], indent=2) + "\n", encoding="utf-8")
    (edge_dir / "fleet.json").write_text(json.dumps({"devices": rows, "telemetry": sequence}, indent=2) + "\n")
    (edge_dir / "demo.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    store.close()
    if len(on_int8) != len(devices):
        console.print(f"[yellow]{len(on_int8)} of {len(devices)} devices run the int8 model[/]")
    else:
        console.print(f"[green]all {len(devices)} devices run the int8 model[/]")
    console.print(f"everything is under {run_dir}")
    return summary

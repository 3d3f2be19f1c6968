"""``fedge package``: turn a run's trained model into verified edge artifacts (ONNX, TFLite) with a report.

The logic lives in :mod:`edge.export.package`; this module only reads the options, picks the data and shows
progress. Its :data:`app` is added to the root ``fedge`` command by :mod:`simulations.cli`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from edge.agent.protocol import FORMATS
from edge.export.variants import DEFAULT_VARIANTS, precision_choices

TUNE_CHOICES = ("held-out", "pool")

app = typer.Typer()


@app.command()
def package(
    run_dir: Annotated[
        Path,
        typer.Argument(help="A finished run directory (runs/<run-id>/, with model.pt, model.json and config.json)."),
    ],
    formats: Annotated[
        list[str] | None,
        typer.Option("--format", "-f", help=f"Artifact format: {', '.join(FORMATS)} (repeatable; default: all)."),
    ] = None,
    variants: Annotated[
        list[str] | None,
        typer.Option(
            "--variant",
            "-V",
            help=(
                f"What to build (repeatable): a precision ({precision_choices()}) of the trained "
                "model, or KIND-PRECISION with KIND one of pruned (unstructured), channels (channel pruning), "
                "student (distilled), e.g. pruned-int8, student. "
                f"Default: {', '.join(DEFAULT_VARIANTS)}."
            ),
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Where the artifacts go (default: RUN_DIR/artifacts/).")
    ] = None,
    sparsity: Annotated[
        float, typer.Option(help="Fraction of weights zeroed by global magnitude pruning (pruned-*), in [0, 1).")
    ] = 0.5,
    channels: Annotated[
        float,
        typer.Option(help="Fraction of each layer's channels removed by channel pruning (channels-*), in [0, 1)."),
    ] = 0.5,
    fine_tune_epochs: Annotated[
        int, typer.Option(help="Epochs of fine-tuning after pruning, on the tuning data (0: none).")
    ] = 1,
    student: Annotated[
        str | None, typer.Option(help="Registry model to use as the student (default: the teacher at --student-width).")
    ] = None,
    student_width: Annotated[
        float | None, typer.Option(help="The student's width multiplier of the teacher, in (0, 1) (default 0.4).")
    ] = None,
    distill_epochs: Annotated[int, typer.Option(help="Epochs of distillation for student-*.")] = 5,
    temperature: Annotated[
        float, typer.Option(help="Distillation temperature T (softens the teacher's labels).")
    ] = 4.0,
    alpha: Annotated[float, typer.Option(help="Weight of the teacher's soft labels against the true labels.")] = 0.7,
    tune_on: Annotated[
        str,
        typer.Option(
            help=(
                "Data for calibration, fine-tuning and distillation: 'held-out' (half of the server's held-out "
                "split; the other half measures accuracy), 'pool' (the clients' pooled training data, for "
                "simulations; accuracy on the whole held-out split), or an .npz file with arrays x and y."
            )
        ),
    ] = "held-out",
    calibration: Annotated[
        Path | None,
        typer.Option(help="A .npy/.npz file of calibration samples for int8 (default: samples of the tuning data)."),
    ] = None,
    calibration_size: Annotated[int, typer.Option(help="Calibration samples used for int8 (at most).")] = 256,
    latency_runs: Annotated[
        int, typer.Option(help="Timed single-sample calls per artifact (1 thread); the median is reported.")
    ] = 200,
    seed: Annotated[int, typer.Option(help="Seed for the data split, pruning fine-tune and distillation.")] = 0,
) -> None:
    """Compress and export a run's model; verify every artifact against the float model; write a report.

    Writes RUN_DIR/artifacts/: one file per variant and format (int8.onnx, pruned-int8.tflite, ...), a JSON
    description next to each (format, dtype, input/output shape, dtype and quantization parameters, sha256, size,
    accuracy, agreement with the float model, latency), report.md (a table of all) and accuracy-size.png.
    """
    from edge.export.native_log import native_stderr_to
    from edge.export.package import PackageOptions, package_model, plan_steps
    from edge.export.run_source import run_package_inputs
    from shared_models.run_dir import RunDir

    options = PackageOptions(
        **({"formats": tuple(formats)} if formats else {}),
        **({"variants": tuple(variants)} if variants else {}),
        sparsity=sparsity,
        channel_amount=channels,
        fine_tune_epochs=fine_tune_epochs,
        student=student,
        student_width=student_width,
        distill_epochs=distill_epochs,
        temperature=temperature,
        alpha=alpha,
        latency_runs=latency_runs,
        seed=seed,
    )
    options.check_tools()
    inputs = run_package_inputs(
        run_dir, tune_on=tune_on, calibration=calibration, calibration_size=calibration_size, seed=seed
    )
    out_dir = out or RunDir(run_dir).artifacts
    console = Console()
    with (
        native_stderr_to(RunDir(run_dir).logs / "native.log"),
        Progress(
            TextColumn("[progress.description]{task.description}"), BarColumn(), TimeElapsedColumn(), console=console
        ) as progress,
    ):
        task = progress.add_task("packaging", total=plan_steps(options))
        result = package_model(
            inputs, out_dir, options, on_step=lambda d: progress.update(task, advance=1, description=d)
        )
        progress.update(task, completed=plan_steps(options), description="done")
    table = Table(title=f"artifacts in {out_dir}")
    for column in ("file", "dtype", "KiB", "accuracy", "agreement", "max |Δ|", "latency ms"):
        table.add_column(column, justify="left" if column in ("file", "dtype") else "right", no_wrap=column == "file")
    for a in result.artifacts:
        m = a["metrics"]
        table.add_row(
            a["file"],
            a["dtype"],
            f"{a['size-bytes'] / 1024:.1f}",
            f"{m['accuracy']:.4f}",
            f"{m['top1-agreement']:.4f}",
            f"{m['max-abs-diff']:.3g}",
            f"{m['latency-ms']:.3f}",
        )
    console.print(table)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")
    console.print(f"report: {result.report}")


@app.command()
def accept(
    run_dir: Annotated[Path, typer.Argument(help="A run directory whose artifacts fedge package wrote.")],
    artifacts: Annotated[Path | None, typer.Option(help="The artifacts folder (default: RUN_DIR/artifacts/).")] = None,
    max_site_drop: Annotated[
        float,
        typer.Option(
            help="Refuse an artifact that loses more accuracy than this on any site (vs its reference on that site: "
            "the fp32 artifact, or the global model for fp32)."
        ),
    ] = 0.05,
    sites: Annotated[
        int | None,
        typer.Option(help="Number of sites of a pooled-data run (default: the clients that trained). Simulated only."),
    ] = None,
    max_samples: Annotated[int, typer.Option(help="Samples per site at most (a seeded subset).")] = 1000,
    superlink: Annotated[
        str | None,
        typer.Option(
            help="Run it on the federation's real nodes through this SuperLink (HOST:PORT, as for fedge run); "
            "RUN_DIR and --artifacts are then paths on the server. Without it, the sites are simulated in-process."
        ),
    ] = None,
    ca: Annotated[Path | None, typer.Option(help="The federation's CA certificate (ca.crt), with --superlink.")] = None,
    insecure: Annotated[bool, typer.Option(help="No TLS to the SuperLink: only on a trusted test network.")] = False,
    min_sites: Annotated[
        int | None,
        typer.Option(
            help="With --superlink: how many nodes must report (default: every site that trained, from the run's "
            "privacy ledger); fewer refuses every artifact (exit code 2)."
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option(help="With --superlink: seconds to wait for the nodes and their replies.")
    ] = 300.0,
) -> None:
    """Acceptance test of the exact artifact bytes on every site of the federation, before a rollout.

    Each site runs the very files (sha256 checked) with the device runtimes on its own data. With --superlink, on
    the federation's real nodes: the files travel to every node (fedge node) in a Flower message, each node checks
    their sha256 and reports its accuracies; a node that cannot run them is listed as failed. Without it, simulated:
    each site's data is rebuilt in-process from the run record as its client loaded it. Writes acceptance.json and
    acceptance.md into the artifacts folder and each artifact's verdict into its description's lineage, which
    fedge publish checks (--max-site-drop) and signs into the manifest. Exit code 1 if any artifact is refused.
    """
    from edge.export.native_log import native_stderr_to
    from shared_models.run_dir import RunDir

    console = Console()
    if superlink is not None:
        from edge.export.federated_acceptance import AcceptanceSettings, accept_on_federation
        from server.deployment import Connection

        outcome = accept_on_federation(
            AcceptanceSettings(
                run_dir=run_dir.absolute(),
                artifacts_dir=(artifacts or RunDir(run_dir).artifacts).absolute(),
                max_site_drop=max_site_drop,
                max_samples=max_samples,
                min_sites=min_sites or 0,
                timeout=timeout,
            ),
            Connection(superlink=superlink, ca_certificate=ca, insecure=insecure),
            echo=lambda line: print(line, end="", flush=True),  # the server's log, as fedge run shows it
        )
        if outcome.report is None:
            console.print(f"acceptance report (on the server): {outcome.report_path}", soft_wrap=True)
        else:
            _print_acceptance(console, outcome.report)
        if outcome.refused:
            raise typer.Exit(1)
        return
    from edge.export.acceptance import accept_run

    with native_stderr_to(RunDir(run_dir).logs / "native.log"):
        report = accept_run(
            run_dir,
            artifacts_dir=artifacts,
            max_site_drop=max_site_drop,
            sites=sites,
            max_samples=max_samples,
            progress=lambda message: console.print(f"[dim]{message}[/]"),
        )
    _print_acceptance(console, report)
    if any(row["verdict"] != "accepted" for row in report["artifacts"]):
        raise typer.Exit(1)


def _print_acceptance(console: Console, report: dict) -> None:
    names = [s["name"] for s in report["sites"]]
    table = Table(title=f"acceptance on {len(names)} sites (max drop {report['max-site-drop']:.3f})")
    for column in ("artifact", *names, "worst site", "drop", "verdict"):
        # fold, not cut: on a narrow terminal (or a log) the site names are the point of the table
        justify = "left" if column in ("artifact", "worst site", "verdict") else "right"
        table.add_column(column, justify=justify, overflow="fold")
    if report.get("reference-accuracy"):
        table.add_row("global model", *(f"{report['reference-accuracy'][n]:.3f}" for n in names), "", "", "")
    for row in report["artifacts"]:
        table.add_row(
            row["file"],
            *(f"{row['sites'][n]['accuracy']:.3f}" for n in names),
            row["worst-site"] or "",
            f"{row['worst-site-drop']:.3f}",
            row["verdict"],
        )
    console.print(table)
    for failed in report.get("failed-sites") or []:
        console.print(f"[yellow]failed site[/] {escape(failed['site'])}: {escape(failed['reason'])}", soft_wrap=True)

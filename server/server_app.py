"""The Flower ServerApp: build the strategy, run the rounds, evaluate centrally, keep the run record.

After every round the server saves what it needs to go on exactly where it stopped (``server/resume.py``); a run
config with ``resume-from`` = a run directory continues that run from the round after its last saved one.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from server.config import ServerConfig
from server.errors import ServerConfigError
from server.ledger import PrivacyLedger
from server.packed_grid import PackedArraysGrid, packs_by_default
from server.parameter_average import ParameterAverage
from server.resume import (
    ResumeError,
    ServerState,
    load_server_state,
    load_strategy_state,
    save_server_state,
    strategy_state,
)
from server.rounds import RoundLoop, RoundOutcome
from server.run_record import RunRecord
from server.sites import fairness
from server.strategies import MEAN_BASED, build_strategy
from shared_models.models import count_parameters
from shared_models.registry import batchnorm_layers
from shared_models.training import evaluate

log = logging.getLogger("fedge.server")
app = ServerApp()


def round_config(server_round: int, *, num_classes: int) -> ConfigRecord:
    """What every node gets with a round: its number, and the federation's number of classes (the run config's
    ``num-classes``, else the server's data set's), so a node whose labels are a subset still builds the global
    model's output layer."""
    return ConfigRecord({"server-round": server_round, "num-classes": int(num_classes)})


def refuse_batchnorm_without_fix(model: torch.nn.Module, config: ServerConfig) -> None:
    """Before any round: a DP run of a model with BatchNorm layers fails on every client, so it stops here."""
    layers = batchnorm_layers(model) if config.dp else []
    if layers:
        raise ServerConfigError(
            f"the model {config.model_config.factory.import_path} has BatchNorm layers ({', '.join(layers)}), which "
            "DP-SGD cannot train; set dp-fix-model = true to replace them by GroupNorm, or change the model"
        )


def run_server(grid: Grid, config: ServerConfig) -> dict[str, Any]:
    """Run a whole federated training and return its summary (also written to the run directory)."""
    random.seed(config.seed)  # Flower's strategies sample nodes with `random`
    torch.manual_seed(config.seed)
    test_set = config.data.server_test_set()
    model = config.model_config.build(test_set.input_shape, test_set.num_classes)
    refuse_batchnorm_without_fix(model, config)
    strategy = build_strategy(config.strategy, config.strategy_options)
    ledger = PrivacyLedger(config.target_epsilon, config.target_delta, enabled=config.dp)
    saved = load_server_state(config.resume_from) if config.resume_from is not None else None
    # server-ema: the server evaluates, checkpoints and finally saves a moving average of the global models (the
    # clients go on training the plain aggregate); post-processing of the clients' releases, so no ε is spent
    average = ParameterAverage(decay=config.server_ema) if config.server_ema > 0 else None
    if saved is not None:
        ledger = PrivacyLedger.from_state_dict(saved.ledger) if saved.ledger else ledger
        load_strategy_state(strategy, saved.strategy)
        if average is not None and saved.average is not None:
            average.load_state_dict(saved.average)
    record = RunRecord(
        config.run_dir,
        config=config.raw,
        model_info={
            **config.model_config.record(model),
            "device-preprocessing": config.data.loader.device_preprocessing(config.data.loader_options),
            "input-shape": list(test_set.input_shape),
            "num-classes": test_set.num_classes,
            "parameters": count_parameters(model),
            "dataset": config.data.dataset,
            "data-path": config.data.data_path,
            "test-fraction": config.data.test_fraction,
            "seed": config.data.seed,
        },
        rounds=saved.rounds if saved is not None else None,
    )
    packed = PackedArraysGrid(grid) if config.pack_arrays and packs_by_default(grid) else None
    if packed is not None:  # real nodes: each message's arrays as one object on the SuperLink
        grid = packed
    loop = RoundLoop(
        strategy=strategy,
        grid=grid,
        ledger=ledger,
        stream=config.stream_aggregation and config.strategy in MEAN_BASED,
        round_timeout=config.round_timeout,
        min_replies=config.min_replies,
        straggler_timeout=config.straggler_timeout,
        max_in_flight=config.max_in_flight,
        evaluate_every=config.evaluate_every,
        budget_aware=config.budget_aware_sampling,
    )

    def central_eval(arrays: ArrayRecord) -> tuple[float, float]:
        model.load_state_dict(arrays.to_torch_state_dict())
        result = evaluate(model, test_set)
        return result.loss, result.accuracy

    if saved is None:
        initial = ArrayRecord(model.state_dict())
        loss0, acc0 = central_eval(initial)
        record.add_round({"round": 0, "central-loss": loss0, "central-accuracy": acc0}, ledger)
        record.save_checkpoint(0, model.state_dict())
        first_round = 1
    else:
        try:
            model.load_state_dict({k: torch.from_numpy(v) for k, v in saved.arrays.items()})
        except RuntimeError as e:
            raise ResumeError(
                f"the saved global model in {config.run_dir} does not fit model {config.model!r} on this data: {e}"
            ) from e
        initial = ArrayRecord(model.state_dict())
        acc0 = record.rounds[0]["central-accuracy"]
        first_round = saved.server_round + 1
        random.setstate(saved.python_random)
        torch.set_rng_state(saved.torch_random)
    console = Console(stderr=True)
    console.print(
        f"[bold]fedge[/] run {config.run_dir.name}: {config.strategy} x {config.num_rounds} rounds, model "
        f"{config.model}, data {config.data.dataset} ({config.data.partitioner}), DP "
        f"{'on, target ε=' + format(config.target_epsilon, 'g') if config.dp else 'off'}; initial accuracy {acc0:.3f}"
        + (f"; resumed after round {first_round - 1}" if saved is not None else "")
        + f"; writing its run record to {config.run_dir}",
        soft_wrap=True,  # one line, whatever the width: `fedge run` and people reading `flwr log` find the path
    )
    progress = Progress(
        TextColumn("[bold]round"),
        MofNCompleteColumn(),
        BarColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        disable=not config.progress,
    )
    task = progress.add_task(
        "rounds",
        total=config.num_rounds,
        completed=first_round - 1,
        status=f"acc {record.rounds[-1]['central-accuracy']:.3f}",
    )

    reported: list[ArrayRecord] = []  # the last round's model as the server reports it (the average, with server-ema)

    def after_round(outcome: RoundOutcome) -> None:
        arrays = outcome.arrays
        if average is not None:
            mean = average.update({k: a.numpy() for k, a in outcome.arrays.items()})
            arrays = ArrayRecord({k: torch.from_numpy(v) for k, v in mean.items()})
        reported[:] = [arrays]
        loss, acc = central_eval(arrays)
        record.save_checkpoint(outcome.server_round, arrays.to_torch_state_dict())
        entry = {
            "round": outcome.server_round,
            "central-loss": loss,
            "central-accuracy": acc,
            # what central-loss/-accuracy and the checkpoint are of: the round's global model, or its moving average
            "evaluated-model": f"server-ema {config.server_ema:g}" if average is not None else "global",
            "train-loss": outcome.train_metrics.get("train-loss"),
            "clients-sampled": outcome.sampled,
            "clients-trained": outcome.replied,
            "clients-refused": outcome.refused,
            "clients-failed": outcome.failed,
            "clients-timed-out": outcome.timed_out,
            "failures": outcome.failures,
            "trained-on": outcome.trained_on,
            "clients-not-affordable": outcome.not_affordable,
            "update-discarded": outcome.discarded,
            "epsilon-max": ledger.max_epsilon if config.dp else None,
            "epsilon-mean": ledger.mean_epsilon if config.dp else None,
            "seconds": outcome.seconds,
            # where a round's time goes on real nodes (weighted means over the nodes that trained)
            "client-startup-seconds": outcome.train_metrics.get("startup-seconds"),
            "client-handler-seconds": outcome.train_metrics.get("handler-seconds"),
            # replies whose arrays travelled packed (pack-arrays, on real nodes): fedge's ClientApp answers in kind
            "packed-replies": packed.take_packed_replies() if packed is not None else 0,
            **{f"federated-{k}": v for k, v in outcome.evaluate_metrics.items()},
        }
        if outcome.sites:
            entry["sites"] = outcome.sites
            entry.update(fairness(outcome.sites, threshold=config.site_accuracy_threshold))
        if saved is not None and outcome.server_round == first_round:
            entry["resumed"] = True
        # resume.pt first, then the round in metrics.json: whoever sees round N there (a person, the dashboard, a
        # test that kills the server) can count on a restart going on from round N + 1
        record.add_round(
            entry,
            ledger,
            before_write=lambda: save_server_state(
                config.run_dir,
                ServerState(
                    server_round=outcome.server_round,
                    arrays={k: a.numpy() for k, a in outcome.arrays.items()},
                    strategy=strategy_state(strategy),
                    ledger=ledger.state_dict(),
                    python_random=random.getstate(),
                    torch_random=torch.get_rng_state(),
                    rounds=record.rounds,
                    average=average.state_dict() if average is not None else None,
                ),
            ),
        )
        eps = f"  ε max {ledger.max_epsilon:.2f}" if config.dp else ""
        refused = f"  {outcome.refused} refused" if outcome.refused else ""
        failed = f"  {outcome.failed} failed" if outcome.failed else ""
        late = f"  {outcome.timed_out} timed out" if outcome.timed_out else ""
        status = f"acc {acc:.3f}{eps}  {outcome.replied}/{outcome.sampled} trained{refused}{failed}{late}"
        progress.update(task, advance=1, status=status)
        progress.console.print(
            f"round {outcome.server_round:>3}/{config.num_rounds}: {status}  ({outcome.seconds:.1f}s)"
        )
        if outcome.sites:
            below = entry["sites-below-threshold"]
            progress.console.print(
                f"  sites: worst {entry['worst-site']} {entry['worst-site-accuracy']:.3f}, spread "
                f"{entry['site-accuracy-spread']:.3f}"
                + (f", below {config.site_accuracy_threshold:g}: {', '.join(below)}" if below else ""),
                soft_wrap=True,
            )

    with progress:
        final = loop.run(
            initial,
            num_rounds=config.num_rounds,
            first_round=first_round,
            train_config=lambda r: round_config(r, num_classes=test_set.num_classes),
            after_round=after_round,
        )
    if loop.stopped is not None:
        record.stop(loop.stopped, ledger)
        console.print(f"[bold]stopped[/]: {loop.stopped['reason']}", soft_wrap=True)
    # model.pt is the model the run reported last: with server-ema, the moving average
    record.save_final((reported[0] if reported else final).to_torch_state_dict())
    plots = record.plot(ledger, site_accuracy_threshold=config.site_accuracy_threshold)
    last_sites = next((r for r in reversed(record.rounds) if r.get("sites")), {})
    summary = {
        "run-dir": str(config.run_dir),
        "rounds": config.num_rounds,
        "rounds-run": record.rounds[-1]["round"],
        "stopped": loop.stopped,
        **{k: last_sites.get(k) for k in ("worst-site", "worst-site-accuracy", "site-accuracy-spread")},
        "sites-below-threshold": last_sites.get("sites-below-threshold"),
        "final-accuracy": record.rounds[-1]["central-accuracy"],
        "initial-accuracy": acc0,
        "max-epsilon": ledger.max_epsilon if config.dp else None,
        "plots": [str(p) for p in plots],
    }
    console.print(
        f"done: accuracy {acc0:.3f} -> {summary['final-accuracy']:.3f}"
        + (f", max ε {ledger.max_epsilon:.3f} (budget {config.target_epsilon:g})" if config.dp else "")
        + f"; run record in {config.run_dir}",
        soft_wrap=True,  # `fedge run` reads the path from this line (server/deployment.py: RUN_RECORD_LINE)
    )
    return summary


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_server(grid, ServerConfig.from_context(context))

"""What DP-SGD costs in time: seconds per local epoch with Opacus over the same epoch without it.

Same model (``mnist-cnn``, 1.66M parameters), same data (the first ``--train-size`` of the 8,000 MNIST training
images: the split ``FederatedData(dataset="mnist", test_fraction=0.2, seed=0)`` gives), batch 64, on the CPU. The
DP path is the client's own: ``client.privacy.make_private`` (Poisson sampling, the run-long RDP accountant) and the
shared ``train_epochs`` loop, once per Opacus ``grad_sample_mode`` that keeps the DP guarantee on one machine:

- ``hooks``: per-sample gradients from module hooks (Opacus's default);
- ``functorch``: per-sample gradients from ``torch.func`` (vmap over one sample's gradient);
- ``ew``: PyTorch's ExpandedWeights;
- ``ghost``: Opacus's ghost clipping (per-sample gradient *norms* without the per-sample gradients, then a second
  backward pass with the clipped loss);
- ``bk``: ghost clipping in one backward pass (``client/bk_clipping.py``: the layers' output gradients only, the
  clipped sum from activations and output gradients) under Opacus's ghost-clipping optimizer, noise and
  accountant; the client's default.

(``no_op`` computes no per-sample gradients and clips nothing, and ``ghost_fsdp`` / ``ghost_tp`` need a process
group, so they are left out.) Every mode and the plain loop are timed in turn, one epoch each, for ``--repeats``
rounds (the order rotates every round), and the median is reported with its ratio to plain SGD at the same
number of torch threads. ``--threads 1,2`` runs the whole set once per thread count, interleaved, so the thread
setting is compared in the same run too (a Flower simulation on Ray gives each client actor one thread).

    python -m simulations.benchmarks.dp_cost --repeats 5 --threads 1,2
"""

from __future__ import annotations

import copy
import itertools
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from opacus.accountants import RDPAccountant
from rich.progress import Progress
from torch import nn

from client.config import DP_MODES, PrivacyConfig
from client.privacy import RoundPlan, make_private
from shared_models.data import ArrayDataset, load_mnist, train_test_split
from shared_models.models import build_model, count_parameters
from shared_models.training import train_epochs
from simulations.benchmarks.common import Row, base_parser, write_results

NAME = "dp_cost"
PLAIN = "plain SGD"

for _message in ("Secure RNG turned off", "Full backward hook is firing", "Optimal order is the largest alpha"):
    warnings.filterwarnings("ignore", message=_message)


@dataclass
class Trainer:
    """One way of training: a model, its (possibly DP) optimizer, loader and loss, ready for one more epoch."""

    name: str
    threads: int
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loader: object
    criterion: Callable

    def epoch(self, *, max_batches: int | None = None) -> tuple[float, int]:
        torch.set_num_threads(self.threads)
        loader = self.loader if max_batches is None else list(itertools.islice(self.loader, max_batches))
        start = time.perf_counter()
        _, steps = train_epochs(
            self.model, loader, optimizer=self.optimizer, criterion=self.criterion, epochs=1, device="cpu"
        )
        return time.perf_counter() - start, steps


def make_trainer(
    mode: str | None,
    base: nn.Module,
    data: ArrayDataset,
    *,
    threads: int,
    batch_size: int,
    lr: float,
    max_grad_norm: float,
    noise_multiplier: float,
) -> Trainer:
    model = copy.deepcopy(base)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    criterion = nn.CrossEntropyLoss()
    loader = data.loader(batch_size, shuffle=True, seed=0)
    if mode is None:
        return Trainer(label(PLAIN, threads), threads, model, optimizer, loader, criterion)
    batches = -(-len(data) // batch_size)
    plan = RoundPlan(noise_multiplier=noise_multiplier, sample_rate=1.0 / batches, steps=batches, epsilon_after=0.0)
    config = PrivacyConfig(max_grad_norm=max_grad_norm, grad_sample_mode=mode)
    dp_model, dp_optimizer, dp_loader, dp_criterion = make_private(
        model, optimizer, loader, criterion, plan=plan, config=config, accountant=RDPAccountant()
    )
    return Trainer(label(f"Opacus {mode}", threads), threads, dp_model, dp_optimizer, dp_loader, dp_criterion)


def label(name: str, threads: int) -> str:
    return f"{name}, {threads} thread{'s' if threads > 1 else ''}"


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(NAME, __doc__.split("\n\n")[0])
    parser.add_argument("--modes", default=",".join(m for m in DP_MODES), help="comma-separated grad_sample_modes")
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per mode (median reported)")
    parser.add_argument("--train-size", type=int, default=2000, help="training images per epoch (of the 8,000)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--threads", default="0", help="comma-separated torch intra-op thread counts to compare (0: torch's default)"
    )
    parser.add_argument("--warmup-batches", type=int, default=3, help="untimed batches per mode before timing")
    args = parser.parse_args(argv)
    default_threads = torch.get_num_threads()
    thread_counts = [int(t) or default_threads for t in args.threads.split(",") if t.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in DP_MODES]
    if unknown:
        parser.error(f"unknown mode(s) {unknown}; choose from {', '.join(DP_MODES)}")

    train, _ = train_test_split(load_mnist(args.mnist), test_size=2000, seed=0)
    data = train.subset(range(min(args.train_size, len(train))))
    base = build_model("mnist-cnn", input_shape=data.input_shape, num_classes=data.num_classes, seed=0)
    torch.manual_seed(0)
    kwargs = dict(batch_size=args.batch_size, lr=0.05, max_grad_norm=1.0, noise_multiplier=1.0)
    trainers = [make_trainer(m, base, data, threads=t, **kwargs) for t in thread_counts for m in [None, *modes]]

    times: dict[str, list[float]] = {t.name: [] for t in trainers}
    steps: dict[str, list[int]] = {t.name: [] for t in trainers}
    with Progress(transient=True) as progress:
        task = progress.add_task("warm-up", total=len(trainers) * (args.repeats + 1))
        for t in trainers:
            t.epoch(max_batches=args.warmup_batches)
            progress.advance(task)
        for rep in range(args.repeats):
            order = trainers[rep % len(trainers) :] + trainers[: rep % len(trainers)]
            for t in order:
                progress.update(task, description=f"round {rep + 1}/{args.repeats}: {t.name}")
                seconds, n = t.epoch()
                times[t.name].append(seconds)
                steps[t.name].append(n)
                progress.advance(task)

    medians = {name: statistics.median(seconds) for name, seconds in times.items()}
    first_plain = label(PLAIN, thread_counts[0])
    rows = []
    for t in trainers:
        plain = label(PLAIN, t.threads)
        if t.name == first_plain:
            rows.append(Row(f"seconds per epoch, {t.name}", medians[t.name], "s"))
        else:
            baseline = first_plain if t.name == plain else plain
            rows.append(Row.compare(f"seconds per epoch, {t.name}", medians[t.name], "s", baseline, medians[baseline]))
    write_results(
        NAME,
        rows,
        out=args.out,
        settings={
            "model": "mnist-cnn",
            "parameters": count_parameters(base),
            "train-size": len(data),
            "batch-size": args.batch_size,
            "device": "cpu",
            "torch-threads": thread_counts,
            "torch": torch.__version__,
            "opacus": __import__("opacus").__version__,
            "repeats": args.repeats,
            "statistic": "median",
            "dp": "client.privacy.make_private: Poisson sampling, noise multiplier 1.0, max grad norm 1.0",
            "seconds": times,
            "min-seconds": {name: min(seconds) for name, seconds in times.items()},
            "steps": steps,
        },
    )


if __name__ == "__main__":
    main()

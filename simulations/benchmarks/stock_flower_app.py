"""A stock-Flower peer of fedge's apps, for the sim_scale benchmark: a ServerApp and a ClientApp written as Flower's
own examples write theirs (``quickstart-pytorch``: the ClientApp loads its partition, trains, returns arrays and
``num-examples``; the ServerApp hands FedAvg to ``Strategy.start``), with the same model, data, partition and local
work per client as fedge's (the model and data from fedge's registry, the same training loop, batch size, learning
rate, momentum and epochs), and none of fedge's additions (streaming aggregation, a window of messages in flight,
privacy ledger, failure handling, checkpoints, run record).

``Strategy.start`` has no per-round timing, so the ServerApp's ``evaluate_fn`` (which ``Strategy.start`` calls after
round 0 and after each round) only notes the time: round r took ``stamps[r] - stamps[r - 1]`` (training and the
empty evaluation of ``fraction-evaluate = 0``). The stamps are written to ``<runs-dir>/<run-id>/stock-rounds.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from torch import nn

from shared_models.federation import FederatedData
from shared_models.models import build_model
from shared_models.training import train_epochs

ROUNDS_FILE = "stock-rounds.json"

client_app = ClientApp()
server_app = ServerApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = context.run_config
    partition_id = int(context.node_config["partition-id"])
    num_partitions = int(context.node_config["num-partitions"])
    data = FederatedData.from_run_config(dict(cfg)).client_train_set(partition_id, num_partitions)
    model = build_model(str(cfg["model"]), input_shape=data.input_shape, num_classes=data.num_classes)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    server_round = int(msg.content["config"]["server-round"])
    optimizer = torch.optim.SGD(
        model.parameters(), lr=float(msg.content["config"]["lr"]), momentum=float(cfg["momentum"])
    )
    loss, _steps = train_epochs(
        model,
        data.loader(int(cfg["batch-size"]), shuffle=True, seed=server_round),
        optimizer=optimizer,
        criterion=nn.CrossEntropyLoss(),
        epochs=int(cfg["local-epochs"]),
        device="cpu",
    )
    content = RecordDict(
        {
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord({"train-loss": loss, "num-examples": len(data)}),
        }
    )
    return Message(content=content, reply_to=msg)


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    test = FederatedData.from_run_config(dict(cfg)).server_test_set()
    torch.manual_seed(int(cfg["seed"]))
    model = build_model(str(cfg["model"]), input_shape=test.input_shape, num_classes=test.num_classes)
    strategy = FedAvg(
        fraction_train=float(cfg["fraction-train"]),
        fraction_evaluate=0.0,
        min_available_nodes=int(cfg["min-available-nodes"]),
    )
    stamps: dict[int, float] = {}

    def note_time(server_round: int, _arrays: ArrayRecord) -> MetricRecord | None:
        stamps[server_round] = time.monotonic()
        return None

    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=int(cfg["num-server-rounds"]),
        train_config=ConfigRecord({"lr": float(cfg["learning-rate"])}),
        evaluate_fn=note_time,
    )
    seconds = {r: stamps[r] - stamps[r - 1] for r in sorted(stamps) if r > 0}
    out = Path(str(cfg["runs-dir"])) / str(cfg["run-id"])
    out.mkdir(parents=True, exist_ok=True)
    (out / ROUNDS_FILE).write_text(
        json.dumps({"rounds": [{"round": r, "seconds": s} for r, s in seconds.items()]}), encoding="utf-8"
    )

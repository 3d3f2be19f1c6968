"""The Flower ClientApp: translate Messages into local (private) training and back.

The reply to a train message carries the updated arrays and a MetricRecord with ``train-loss``, ``num-examples``,
``epsilon`` (cumulative over the run), ``delta`` and the DP settings used. A client whose next round would exceed
its budget replies without arrays: a MetricRecord with ``refused`` = 1 and a ConfigRecord ``refusal`` that says
why; the server records it and aggregates the others.
"""

from __future__ import annotations

import warnings

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from client.config import ClientConfig
from client.errors import PrivacyBudgetExhaustedError
from client.privacy import load_accountant, make_private, plan_round, save_accountant
from shared_models.data import ArrayDataset
from shared_models.models import build_model
from shared_models.training import evaluate as evaluate_model
from shared_models.training import train_epochs

# Known, harmless warnings from Opacus on every round; they would bury the run's own output.
for _message in ("Secure RNG turned off", "Full backward hook is firing", "Optimal order is the largest alpha"):
    warnings.filterwarnings("ignore", message=_message)

app = ClientApp()


def _local_model(config: ClientConfig, data: ArrayDataset, arrays: ArrayRecord) -> nn.Module:
    model = build_model(config.model, input_shape=data.input_shape, num_classes=data.num_classes)
    model.load_state_dict(arrays.to_torch_state_dict())
    return model.to(config.device)


def train_locally(
    config: ClientConfig, arrays: ArrayRecord, server_config: ConfigRecord, state: RecordDict
) -> RecordDict:
    """One round of local training; pure of Flower's Context so tests can call it directly."""
    data = config.data.client_train_set(
        config.partition_id, config.num_partitions, node_data_path=config.node_data_path
    )
    model = _local_model(config, data, arrays)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.learning_rate, momentum=config.momentum)
    criterion = nn.CrossEntropyLoss()
    loader = data.loader(config.batch_size, shuffle=True, seed=int(server_config.get("server-round", 0)))
    proximal_mu = float(server_config.get("proximal-mu", 0.0))
    metrics: dict[str, float | int] = {}
    privacy = config.privacy
    accountant = None
    if privacy.enabled:
        accountant = load_accountant(state)
        try:
            plan = plan_round(
                privacy,
                accountant,
                num_examples=len(data),
                batch_size=config.batch_size,
                local_epochs=config.local_epochs,
                state=state,
            )
        except PrivacyBudgetExhaustedError as e:
            spent = accountant.get_epsilon(privacy.target_delta) if accountant.history else 0.0
            return RecordDict(
                {
                    "metrics": MetricRecord(
                        {"refused": 1, "epsilon": spent, "delta": privacy.target_delta, "num-examples": 0}
                    ),
                    "refusal": ConfigRecord({"reason": str(e), "partition-id": config.partition_id}),
                }
            )
        train_model, optimizer, loader, criterion = make_private(
            model, optimizer, loader, criterion, plan=plan, config=privacy, accountant=accountant
        )
        metrics.update({"noise-multiplier": plan.noise_multiplier, "sample-rate": plan.sample_rate})
    else:
        train_model = model
    loss, steps = train_epochs(
        train_model,
        loader,
        optimizer=optimizer,
        criterion=criterion,
        epochs=config.local_epochs,
        device=config.device,
        proximal_mu=proximal_mu,
    )
    if accountant is not None:
        save_accountant(state, accountant)
        metrics["epsilon"] = accountant.get_epsilon(privacy.target_delta)
    metrics.update(
        {"train-loss": loss, "num-examples": len(data), "steps": steps, "delta": privacy.target_delta, "refused": 0}
    )
    return RecordDict(
        {
            "arrays": ArrayRecord(model.cpu().state_dict()),
            "metrics": MetricRecord(metrics),
            "client": ConfigRecord({"partition-id": config.partition_id, "device": str(config.device)}),
        }
    )


@app.train()
def train(msg: Message, context: Context) -> Message:
    config = ClientConfig.from_context(context)
    server_config = msg.content.config_records.get("config", ConfigRecord())
    content = train_locally(config, msg.content["arrays"], server_config, context.state)
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Loss and accuracy of the global model on this client's own data."""
    config = ClientConfig.from_context(context)
    data = config.data.client_train_set(
        config.partition_id, config.num_partitions, node_data_path=config.node_data_path
    )
    model = _local_model(config, data, msg.content["arrays"])
    result = evaluate_model(model, data, device=config.device)
    metrics = MetricRecord({"eval-loss": result.loss, "eval-accuracy": result.accuracy, "num-examples": len(data)})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)

"""The Flower ClientApp: translate Messages into local (private) training and back.

Besides train and evaluate, a node answers ``query.accept`` (``fedge accept RUN_DIR --superlink``, sent by
``edge/export/acceptance_app.py``): it checks the artifacts' sha256, runs them with the device runtimes on its own
data and replies with their accuracies and the global model's (:func:`accept_on_node`).

The reply to a train message carries the updated arrays and a MetricRecord with ``train-loss``, ``num-examples``,
``epsilon`` (cumulative over the run), ``delta`` and the DP settings used. A client whose next round would exceed
its budget replies without arrays: a MetricRecord with ``refused`` = 1 and a ConfigRecord ``refusal`` that says
why; the server records it and aggregates the others. A node that cannot take part (its table does not match the
federation's schema, its data cannot be read) replies with an Error that says why, before any training; the
server counts it as failed and goes on with the others.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import logging
import os
import socket
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from torch import nn

from client.config import ClientConfig
from client.errors import AcceptanceOnNodeError, PrivacyBudgetExhaustedError
from client.state_file import restore_state, save_state, state_file
from shared_models.data import ArrayDataset
from shared_models.errors import FedgeError, SchemaMismatchError
from shared_models.packed_arrays import PackedArraysError, pack_content, unpack_content
from shared_models.registry import ModelConfig
from shared_models.training import evaluate as evaluate_model
from shared_models.training import predict, train_epochs

# Known, harmless warnings from Opacus on every round; they would bury the run's own output.
for _message in ("Secure RNG turned off", "Full backward hook is firing", "Optimal order is the largest alpha"):
    warnings.filterwarnings("ignore", message=_message)

log = logging.getLogger("fedge.client")


def packed_arrays_mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """The ClientApp's mod for ``pack-arrays`` (``shared_models/packed_arrays.py``): the handlers see plain arrays;
    the reply is packed if, and only if, ``msg`` was. A packed message that cannot be read back is answered with an
    Error saying so (the server counts the node as failed for that round), and no handler runs."""
    try:
        packed = msg.has_content() and unpack_content(msg.content)
    except PackedArraysError as e:
        reason = f"{type(e).__name__}: {e}"
        log.error("the %s message cannot be read: %s", msg.metadata.message_type, reason)
        return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)
    reply = call_next(msg, context)
    if packed and reply.has_content():
        pack_content(reply.content)
    return reply


app = ClientApp(mods=[packed_arrays_mod])  # a packed message (from a deployed ServerApp) gets a packed reply
#: the action of the acceptance test's messages: Flower's message type ``query.accept``
ACCEPT_ACTION = "accept"


@functools.lru_cache(maxsize=4)
def _model_template(setup: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The model as built (and checked) once in this process for this architecture. It is never trained or handed
    out, only copied: each message's model is a copy with the global weights loaded into it."""
    return setup.build(input_shape, num_classes)


def _fresh_model(setup: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A model of this architecture whose weights are about to be replaced by the global model's.

    A copy of the process's template rather than a new build: building initialises every weight at random and runs
    a checking forward pass, only for ``load_state_dict`` to overwrite them: 5.9 ms for mnist-cnn's 1.66M
    parameters, where a simulated client's whole local training at 1,000 clients takes about 21 ms. A model that
    cannot be cached (unhashable options) or copied is built as before; one whose build fails fails once, as before."""
    key = (setup, tuple(input_shape), num_classes)
    try:
        hash(key)
    except TypeError:
        return setup.build(input_shape, num_classes)
    template = _model_template(*key)
    try:
        return copy.deepcopy(template)
    except (TypeError, copy.Error, RuntimeError):
        return setup.build(input_shape, num_classes)


def _local_model(config: ClientConfig, data: ArrayDataset, arrays: ArrayRecord) -> nn.Module:
    """The global model on this node's device; refused if this node's data does not fit it."""
    model = _fresh_model(config.model_setup, data.input_shape, data.num_classes)
    local = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    incoming = {k: tuple(a.shape) for k, a in arrays.items()}
    if local != incoming:
        differing = sorted(k for k in set(local) | set(incoming) if local.get(k) != incoming.get(k))
        key = differing[0]
        raise SchemaMismatchError(
            f"this node's data ({data.name}: inputs of shape {data.input_shape}, {data.num_classes} classes) does "
            f"not fit the federation's model: {key!r} would be {local.get(key)} here but is {incoming.get(key)} in "
            "the global model. The node's table does not match the federation's schema (feature columns, "
            "label classes); give it a file with the same columns as the other nodes"
        )
    model.load_state_dict(arrays.to_torch_state_dict())
    return model.to(config.device)


def agreed_classes(server_config: ConfigRecord) -> int:
    """The federation's number of classes, as the server sends it with every round (``num-classes``: the run
    config's, else its own data set's); 0 where it sent none. A node whose labels are a subset of the federation's
    (a hospital with diagnoses 0 and 1 of 0..4) numbers its classes with it, so its model has the global model's
    output layer."""
    return int(server_config.get("num-classes", 0))


def node_data(config: ClientConfig, server_config: ConfigRecord) -> ArrayDataset:
    """This node's own data (its partition, or its own file), its classes numbered as the federation's
    (``num-classes`` in ``server_config``): what it trains, evaluates and accepts artifacts on."""
    return config.data.client_train_set(
        config.partition_id, config.num_partitions, node_data_path=config.node_data_path
    ).with_classes(agreed_classes(server_config))


def train_locally(
    config: ClientConfig, arrays: ArrayRecord, server_config: ConfigRecord, state: RecordDict
) -> RecordDict:
    """One round of local training; pure of Flower's Context so tests can call it directly."""
    data = node_data(config, server_config)
    model = _local_model(config, data, arrays)
    server_round = int(server_config.get("server-round", 1))
    lr = config.learning_rate_at(server_round)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=config.momentum)
    criterion = nn.CrossEntropyLoss()
    loader = data.loader(config.batch_size, shuffle=True, seed=int(server_config.get("server-round", 0)))
    proximal_mu = float(server_config.get("proximal-mu", 0.0))
    metrics: dict[str, float | int] = {}
    dp_details: dict[str, str] = {}
    privacy = config.privacy
    accountant = None
    if privacy.enabled:
        # Imported here, not at the top: Flower starts a fresh process per message, and Opacus takes seconds to
        # import; evaluation, refusals and non-private runs never need it.
        from client.privacy import (
            epsilon_after_round,
            load_accountant,
            make_private,
            plan_round,
            prepare_model,
            reported_history,
            save_accountant,
            steps_taken,
        )

        accountant = load_accountant(state)
        history_before = list(accountant.history)
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
                    "refusal": ConfigRecord(
                        {"reason": str(e), **config.identity, "dp-history": reported_history(accountant)}
                    ),
                }
            )
        prepared = prepare_model(model, fix=privacy.fix_model, requested_mode=privacy.grad_sample_mode)
        model = prepared.model
        if prepared.replaced:
            log.info("replaced for DP-SGD: %s", "; ".join(prepared.replaced))
        if prepared.mode_note:
            log.info(
                "DP mode %s instead of %s: %s", prepared.grad_sample_mode, privacy.grad_sample_mode, prepared.mode_note
            )
        # the optimizer again: the recurrent layers were swapped for Opacus's, with new parameters
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=config.momentum)
        train_model, optimizer, loader, criterion = make_private(
            model,
            optimizer,
            loader,
            criterion,
            plan=plan,
            config=replace(privacy, grad_sample_mode=prepared.grad_sample_mode),
            accountant=accountant,
        )
        metrics.update(
            {
                "noise-multiplier": plan.noise_multiplier,
                "sample-rate": plan.sample_rate,
                "max-grad-norm": privacy.max_grad_norm,
            }
        )
        dp_details = {
            "dp-mode": prepared.grad_sample_mode,
            "dp-replaced-layers": "; ".join(prepared.replaced),
            "dp-accountant": "rdp",
        }
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
        metrics["epsilon"] = epsilon_after_round(accountant, plan, history_before, privacy.target_delta)
        metrics["dp-steps"] = steps_taken(accountant, history_before)
        dp_details["dp-history"] = reported_history(accountant)
    metrics.update(
        {"train-loss": loss, "num-examples": len(data), "steps": steps, "delta": privacy.target_delta, "refused": 0}
    )
    trained = model.cpu().state_dict()
    return RecordDict(
        {
            # in the global model's order: Opacus's DP recurrent layers keep torch's names but not their order
            "arrays": ArrayRecord({key: trained[key] for key in arrays.keys()}),
            "metrics": MetricRecord(metrics),
            "client": ConfigRecord(
                {**config.identity, "device": str(config.device), "trained-on": trained_on(), **dp_details}
            ),
        }
    )


def trained_on() -> str:
    """Where this reply was computed: the Ray node's id inside a simulation (Flower runs ClientApps in Ray actors,
    possibly on several machines of a cluster), else this machine's host name. The server counts replies per place
    in the run record (``trained-on``)."""
    ray = sys.modules.get("ray")  # imported by Flower's Ray backend in its actors; never imported here
    if ray is not None and ray.is_initialized():
        return f"ray-node:{ray.get_runtime_context().get_node_id()}"
    return f"host:{socket.gethostname()}"


def site_name(config: ClientConfig) -> str:
    """This node's site in the run record's per-site evaluation: its ``node-name`` (a hospital's name on a real
    node), else the name of its own data file (a simulated hospital: ``processed.hungarian``), else its partition.

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Node:
    ...     node_name: str = ""
    ...     node_data_path: str = ""
    ...     partition_id: int = 3
    >>> site_name(Node()), site_name(Node(node_data_path="data/processed.va.data")), site_name(Node("zurich"))
    ('partition-3', 'processed.va', 'zurich')
    """
    if config.node_name:
        return config.node_name
    if config.node_data_path:
        return Path(config.node_data_path).stem
    return f"partition-{config.partition_id}"


def _reply(msg: Message, work: Callable[[], RecordDict]) -> Message:
    """The reply to ``msg``: the content ``work`` returns, or, if this node cannot take part, an Error saying why.

    fedge's own errors (a table that does not fit the federation, an unreadable file or privacy state) are replies,
    not crashes: the server logs the reason, counts the node as failed for the round, and goes on without it.
    """
    try:
        return Message(content=work(), reply_to=msg)
    except FedgeError as e:
        reason = f"{type(e).__name__}: {e}"
        log.error("this node cannot take part in the %s round: %s", msg.metadata.message_type, reason)
        return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)


@functools.cache
def _process_started() -> float:
    """When this process started, in seconds since boot (Linux), else NaN. Read once: ``/proc/self/stat`` lists
    every thread's times, which costs a Ray actor with dozens of threads half a millisecond a read."""
    try:
        return int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def _process_age() -> float:
    """Seconds since this process started (Linux), else NaN: in a deployment, what starting a fresh ClientApp
    process for this message cost before our handler ran (interpreter, imports, Flower's set-up)."""
    try:
        return max(0.0, float(Path("/proc/uptime").read_text().split()[0]) - _process_started())
    except (OSError, ValueError, IndexError):
        return float("nan")


@app.train()
def train(msg: Message, context: Context) -> Message:
    startup, started = _process_age(), time.perf_counter()

    def work() -> RecordDict:
        config = ClientConfig.from_context(context)
        saved = state_file(config.state_dir, config.run_key) if config.state_dir else None
        if saved is not None:
            restore_state(context.state, saved)
        server_config = msg.content.config_records.get("config", ConfigRecord())
        content = train_locally(config, msg.content["arrays"], server_config, context.state)
        if saved is not None:
            save_state(context.state, saved)  # before the reply leaves: ε spent is never forgotten
        if "metrics" in content.metric_records:
            content["metrics"]["startup-seconds"] = startup
            content["metrics"]["handler-seconds"] = time.perf_counter() - started
        return content

    return _reply(msg, work)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Loss and accuracy of the global model on this client's own data."""

    def work() -> RecordDict:
        config = ClientConfig.from_context(context)
        data = node_data(config, msg.content.config_records.get("config", ConfigRecord()))
        model = _local_model(config, data, msg.content["arrays"])
        result = evaluate_model(model, data, device=config.device)
        metrics = MetricRecord({"eval-loss": result.loss, "eval-accuracy": result.accuracy, "num-examples": len(data)})
        return RecordDict({"metrics": metrics, "client": ConfigRecord({**config.identity, "site": site_name(config)})})

    return _reply(msg, work)


def accept_on_node(config: ClientConfig, content: RecordDict) -> RecordDict:
    """The acceptance test of the exact artifact bytes on this node's own data; pure of Flower's Context.

    ``content``: the global model (ArrayRecord ``arrays``), the artifacts (ArrayRecord ``artifacts``: each file's
    bytes as a 1-D uint8 array, keyed by file name) and a ConfigRecord ``acceptance`` with each file's
    ``sha256.<file>``, ``max-samples``, ``seed`` and the federation's ``num-classes``. Every file's bytes are checked
    against the sha256 the server sent before anything runs; then each runs in its device runtime, one sample at a
    time, on a seeded subset of this node's data (loaded as for evaluate), and the global model on the same samples
    is the fp32 reference. Replies ``accuracy.<file>``, ``accuracy.global-model`` and ``num-examples``, and this
    node's ``site`` (the name per-site evaluation uses) with its identity."""
    settings = content.config_records.get("acceptance", ConfigRecord())
    artifacts = content.array_records.get("artifacts", ArrayRecord())
    files = {}
    described = {key.removeprefix("sha256.") for key in settings if key.startswith("sha256.")}
    for name in sorted(set(artifacts.keys()) | described):
        if name not in artifacts:
            raise AcceptanceOnNodeError(f"{name}: the server described it but sent no bytes; run fedge accept again")
        data = artifacts[name].numpy().tobytes()
        if hashlib.sha256(data).hexdigest() != settings.get(f"sha256.{name}"):
            raise AcceptanceOnNodeError(
                f"{name}: bytes differ from the sha256 the server sent; nothing was run. The file changed on its way "
                "or on the server: package the run again and run fedge accept again"
            )
        files[name] = data
    if not files:
        raise AcceptanceOnNodeError("the server sent no artifact to test; package the run first (fedge package)")
    try:  # the device runtimes: only a node that runs the acceptance test pays for importing them
        from edge.agent.protocol import format_of
        from edge.agent.runtime import accuracy_of, load_runner
    except ImportError as e:
        raise AcceptanceOnNodeError(
            f"this node cannot run artifacts ({e}): install the device runtimes, pip install 'fedge[agent]'"
        ) from e
    data = node_data(config, settings)
    model = _local_model(config, data, content["arrays"]).cpu()
    samples = data.sample(int(settings.get("max-samples", 1000)), seed=int(settings.get("seed", 0)))
    metrics: dict[str, float | int] = {
        "accuracy.global-model": accuracy_of(lambda x: predict(model, x[None, ...])[0], samples.x, samples.y),
        "num-examples": len(samples),
    }
    for name, blob in files.items():
        fmt = format_of(name)
        if fmt is None:
            raise AcceptanceOnNodeError(f"{name}: no device runtime runs this kind of file (.onnx, .tflite)")
        runner = load_runner(fmt, blob, None)  # a file that does not load: the runtime's error, with its reason
        metrics[f"accuracy.{name}"] = accuracy_of(runner.predict, samples.x, samples.y)
    return RecordDict(
        {"metrics": MetricRecord(metrics), "client": ConfigRecord({**config.identity, "site": site_name(config)})}
    )


@app.query(ACCEPT_ACTION)
def accept(msg: Message, context: Context) -> Message:
    """The acceptance test of the exact artifact bytes (``fedge accept RUN_DIR --superlink``) on this node's data.

    A node that cannot run it replies with an Error whose reason starts with ``site NAME:`` (this node's site), so
    the server lists it by name among the failed sites."""

    def work() -> RecordDict:
        config = ClientConfig.from_context(context)
        try:
            return accept_on_node(config, msg.content)
        except FedgeError as e:
            why = str(e) if isinstance(e, AcceptanceOnNodeError) else f"{type(e).__name__}: {e}"
            raise AcceptanceOnNodeError(f"site {site_name(config)}: {why}") from e

    return _reply(msg, work)

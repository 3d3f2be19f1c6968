"""The sim_scale benchmark's stock-Flower peer does the same work per client as fedge's ClientApp."""

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from client.client_app import train_locally
from client.config import ClientConfig
from shared_models.federation import FederatedData
from shared_models.models import build_model
from simulations.benchmarks import stock_flower_app
from simulations.experiment import apply_overrides, load_experiment, resolve_paths

pytestmark = pytest.mark.usefixtures("task_identity")


def test_the_stock_peer_trains_a_client_exactly_as_fedges_clientapp_does():
    experiment = load_experiment("digits-dp")
    apply_overrides(experiment, ["dp=false", "local-epochs=1"])
    resolve_paths(experiment)
    cfg = dict(experiment.run_config)
    test = FederatedData.from_run_config(cfg).server_test_set()
    arrays = ArrayRecord(
        build_model(cfg["model"], input_shape=test.input_shape, num_classes=test.num_classes).state_dict()
    )
    node_config = {"partition-id": 1, "num-partitions": 5}
    context = Context(run_id=1, node_id=2, node_config=node_config, state=RecordDict(), run_config=cfg)

    # round 1: fedge decays the learning rate from round 2 on, the peer sends a fixed one as Flower's examples do
    # (the same computation either way, which is what the benchmark compares)
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1, "lr": cfg["learning-rate"]})})
    reply = stock_flower_app.train(Message(content=content, dst_node_id=2, message_type="train"), context)
    ours = train_locally(ClientConfig.from_context(context), arrays, ConfigRecord({"server-round": 1}), RecordDict())

    assert reply.content["metrics"]["num-examples"] == ours["metrics"]["num-examples"] > 0
    assert list(reply.content["arrays"].keys()) == list(ours["arrays"].keys())
    for key in ours["arrays"].keys():
        np.testing.assert_allclose(
            reply.content["arrays"][key].numpy(), ours["arrays"][key].numpy(), rtol=1e-5, atol=1e-6
        )

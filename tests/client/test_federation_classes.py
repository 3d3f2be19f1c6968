"""Classes agreed across the federation: a node whose labels are a subset of the federation's still trains."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from client.client_app import train_locally
from client.config import ClientConfig, PrivacyConfig
from server.server_app import round_config
from shared_models.errors import DatasetError, SchemaMismatchError
from shared_models.federation import FederatedData
from shared_models.models import build_model

# The heart-disease tables as they are: diagnosis 0-4 in column 13, no binarizing, num-classes unset.
DATA = FederatedData(dataset="csv", partitioner="natural", label_column="13", csv_header=False)


def _node_file(tmp_path, data_dir, labels):
    rows = [r for r in (data_dir / "processed.cleveland.data").read_text().splitlines() if r]
    keep = [r for r in rows if int(float(r.rsplit(",", 1)[1])) in labels]
    path = tmp_path / "small-hospital.data"
    path.write_text("\n".join(keep) + "\n")
    return path


def _config(node_path) -> ClientConfig:
    return ClientConfig(
        model="tabular-mlp",
        data=DATA,
        partition_id=0,
        num_partitions=1,
        node_data_path=str(node_path),
        local_epochs=1,
        batch_size=32,
        learning_rate=0.1,
        momentum=0.0,
        privacy=PrivacyConfig(enabled=False),
        device=torch.device("cpu"),
    )


def _global_model_arrays(num_classes: int) -> ArrayRecord:
    return ArrayRecord(build_model("tabular-mlp", input_shape=(13,), num_classes=num_classes, seed=0).state_dict())


def test_server_sends_the_federations_class_count_every_round():
    assert round_config(3, num_classes=5) == ConfigRecord({"server-round": 3, "num-classes": 5})


def test_node_with_labels_0_and_1_of_0_to_4_trains(tmp_path, data_dir):
    server = replace(DATA, data_path=str(data_dir / "processed.cleveland.data")).server_test_set()
    assert server.num_classes == 5  # the server's table has diagnoses 0..4
    node = _node_file(tmp_path, data_dir, {0, 1})
    config = _config(node)
    arrays = _global_model_arrays(server.num_classes)
    # Without the federation's count, the node sees 2 classes and its model cannot take the global one.
    with pytest.raises(SchemaMismatchError):
        train_locally(config, arrays, ConfigRecord({"server-round": 1}), RecordDict())
    reply = train_locally(config, arrays, round_config(1, num_classes=server.num_classes), RecordDict())
    assert reply["metrics"]["num-examples"] == len(DATA.client_train_set(0, 1, node_data_path=str(node)))
    trained = reply["arrays"].to_torch_state_dict()
    assert {k: tuple(v.shape) for k, v in trained.items()} == {
        k: tuple(a.shape) for k, a in arrays.to_torch_state_dict().items()
    }
    assert not torch.equal(trained["net.4.weight"], arrays.to_torch_state_dict()["net.4.weight"])


def test_node_label_outside_the_federations_classes_is_named(tmp_path, data_dir):
    node = _node_file(tmp_path, data_dir, {0, 4})
    with pytest.raises(DatasetError, match=r"label 4 \(\d+ samples\) is outside the federation's 3 classes"):
        train_locally(_config(node), _global_model_arrays(3), round_config(1, num_classes=3), RecordDict())
    assert np.isin(DATA.client_train_set(0, 1, node_data_path=str(node)).y, [0, 4]).all()

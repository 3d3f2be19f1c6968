"""scatternet-linear through the client's real DP-SGD path: Opacus takes it in one-pass (bk) clipping with no
fallback, only its norm and linear layer are trained and sent, and ε is spent as planned."""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from client.client_app import train_locally
from client.config import PrivacyConfig
from client.privacy import prepare_model
from shared_models.federation import FederatedData
from shared_models.models import build_model
from shared_models.registry import ModelConfig
from tests.client.digits_client import digits_client


def load_stripes(data_path):
    """120 16x16 images of three classes: horizontal, vertical or diagonal stripes, with noise."""
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[0:16, 0:16]
    patterns = [np.sin(rows * 1.2), np.sin(cols * 1.2), np.sin((rows + cols) * 0.9)]
    y = np.arange(120) % 3
    x = np.stack([patterns[c] + 0.3 * rng.standard_normal((16, 16)) for c in y])[:, None].astype(np.float32)
    return x, y.astype(np.int64)


def test_prepare_model_keeps_one_pass_clipping_for_scatternet_linear():
    model = build_model("scatternet-linear", input_shape=(1, 28, 28), num_classes=10)
    prepared = prepare_model(model, fix=False, requested_mode="bk")
    assert prepared.grad_sample_mode == "bk"
    assert prepared.mode_note == ""
    assert prepared.replaced == ()


def test_scatternet_linear_trains_with_dp_sgd_and_sends_only_its_trained_layers():
    global_model = build_model("scatternet-linear", input_shape=(1, 16, 16), num_classes=3)
    arrays = ArrayRecord(global_model.state_dict())
    config = digits_client(
        PrivacyConfig(enabled=True, target_epsilon=3.0, planned_rounds=2),
        model="scatternet-linear",
        model_config=ModelConfig(model="scatternet-linear"),
        data=FederatedData(dataset="tests.client.test_scatternet_dp:load_stripes", test_fraction=0.25),
        num_partitions=1,
        local_epochs=2,
        batch_size=30,
        learning_rate=2.0,
    )
    reply = train_locally(config, arrays, ConfigRecord({"server-round": 1, "num-classes": 3}), RecordDict())
    assert reply["client"]["dp-mode"] == "bk"
    assert sorted(reply["arrays"].keys()) == ["classifier.bias", "classifier.weight", "norm.bias", "norm.weight"]
    assert 0 < reply["metrics"]["epsilon"] < 3.0  # the first of two planned rounds
    trained = reply["arrays"].to_torch_state_dict()
    assert trained["classifier.weight"].abs().sum() > 0  # it left its zero start
    global_model.load_state_dict(trained)

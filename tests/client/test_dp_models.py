"""DP on any reasonable model: Opacus's validator names every refused layer, dp-fix-model replaces them (named),
recurrent layers train through Opacus's DP versions with the weights kept, and the gradient mode is chosen."""

from __future__ import annotations

import copy

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from torch import nn

from client.errors import ModelNotPrivateError
from client.privacy import choose_grad_sample_mode, prepare_model


class BatchNormNet(nn.Module):
    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv1d(2, 8, 3, padding=1), nn.BatchNorm1d(8), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 6, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class SequenceNet(nn.Module):
    """A GRU or LSTM over (batch, steps, features), classifying from the last step."""

    def __init__(self, kind: type[nn.Module] = nn.GRU, num_classes: int = 3) -> None:
        super().__init__()
        self.rnn = kind(input_size=3, hidden_size=8, batch_first=True)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1, :])


def test_batchnorm_is_refused_naming_the_layer_and_the_fix():
    with pytest.raises(ModelNotPrivateError, match=r"features\.1 \(BatchNorm1d.*dp-fix-model = true.*--fix-model"):
        prepare_model(BatchNormNet(), fix=False, requested_mode="ghost")


def test_batchnorm_fixed_with_the_option_names_the_replaced_layer():
    prepared = prepare_model(BatchNormNet(), fix=True, requested_mode="ghost")
    assert prepared.replaced == ("features.1: BatchNorm1d -> GroupNorm",)
    assert isinstance(prepared.model.features[1], nn.GroupNorm)
    assert prepared.grad_sample_mode == "ghost"


@pytest.mark.parametrize("kind", [nn.GRU, nn.LSTM, nn.RNN])
def test_recurrent_layer_is_refused_then_swapped_with_its_weights(kind):
    model = SequenceNet(kind)
    with pytest.raises(ModelNotPrivateError, match=rf"rnn \({kind.__name__}"):
        prepare_model(copy.deepcopy(model), fix=False, requested_mode="ghost")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prepared = prepare_model(model, fix=True, requested_mode="ghost")
    assert prepared.replaced == (f"rnn: {kind.__name__} -> DP{kind.__name__} (weights kept)",)
    after = prepared.model.state_dict()  # Opacus's layer also lists its cells' own names for the same tensors
    assert set(before) <= set(after) and all(torch.equal(after[k], before[k]) for k in before)
    # one norm per call would be wrong for a layer called once per time step: hooks, and it says why
    assert prepared.grad_sample_mode == "hooks" and "time step" in prepared.mode_note


def test_mode_ghost_kept_where_it_applies_and_ew_falls_back():
    assert choose_grad_sample_mode(nn.Sequential(nn.Linear(3, 2)), "ghost") == ("ghost", "")
    mode, note = choose_grad_sample_mode(nn.Sequential(nn.Linear(3, 2), nn.PReLU()), "ew")
    assert mode == "hooks" and "PReLU" in note


def test_a_gru_model_trains_with_dp_and_returns_the_global_models_arrays():
    from client.client_app import train_locally
    from client.config import ClientConfig, PrivacyConfig
    from shared_models.federation import FederatedData
    from shared_models.registry import ModelConfig

    torch.manual_seed(0)
    global_model = SequenceNet(nn.GRU)
    arrays = ArrayRecord(global_model.state_dict())
    config = ClientConfig(
        model="tests.client.test_dp_models:build_gru",
        model_config=ModelConfig(model="tests.client.test_dp_models:build_gru"),
        data=FederatedData(dataset="tests.client.test_dp_models:load_sequences", test_fraction=0.25),
        partition_id=0,
        num_partitions=2,
        node_data_path="",
        local_epochs=1,
        batch_size=8,
        learning_rate=0.5,
        momentum=0.0,
        privacy=PrivacyConfig(enabled=True, target_epsilon=5.0, planned_rounds=2, fix_model=True),
        device=torch.device("cpu"),
    )
    reply = train_locally(config, arrays, ConfigRecord({"server-round": 1, "num-classes": 3}), RecordDict())
    assert list(reply["arrays"].keys()) == list(arrays.keys())
    assert reply["client"]["dp-mode"] == "hooks"
    assert reply["client"]["dp-replaced-layers"] == "rnn: GRU -> DPGRU (weights kept)"
    assert 0 < reply["metrics"]["epsilon"] <= 5.0
    trained = reply["arrays"].to_torch_state_dict()
    assert not torch.equal(trained["rnn.weight_ih_l0"], global_model.state_dict()["rnn.weight_ih_l0"])
    global_model.load_state_dict(trained)  # the server's nn.GRU takes the DP-trained weights as they are


def build_gru(input_shape, num_classes):
    torch.manual_seed(0)
    return SequenceNet(nn.GRU, num_classes)


def load_sequences(data_path):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(96, 5, 3, generator=generator)
    y = torch.arange(96) % 3
    x[:, :, 0] += y[:, None].float()
    return x.numpy(), y.numpy()

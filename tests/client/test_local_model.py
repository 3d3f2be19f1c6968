"""Each message's model is a copy of the process's template with the global weights in it, never shared state."""

from types import SimpleNamespace

import torch
from flwr.app import ArrayRecord

from client.client_app import _fresh_model, _local_model, _model_template
from shared_models.data import load_digits
from shared_models.registry import ModelConfig


def _config() -> SimpleNamespace:  # what _local_model reads of a ClientConfig
    return SimpleNamespace(model_setup=ModelConfig(model="digits-cnn"), device=torch.device("cpu"))


def _global(seed: int) -> ArrayRecord:
    torch.manual_seed(seed)
    return ArrayRecord(ModelConfig(model="digits-cnn").build((1, 8, 8), 10).state_dict())


def test_each_message_gets_its_own_model_holding_the_global_weights():
    config, data = _config(), load_digits()
    first, second = _local_model(config, data, _global(1)), _local_model(config, data, _global(2))
    template = _model_template(config.model_setup, data.input_shape, data.num_classes)
    assert first is not template and second is not template
    for key, value in _global(1).to_torch_state_dict().items():
        assert torch.equal(first.state_dict()[key], value)
    with torch.no_grad():  # training one message's model leaves the next one's and the template alone
        for p in first.parameters():
            p.add_(1.0)
    third = _local_model(config, data, _global(2))
    for key, value in _global(2).to_torch_state_dict().items():
        assert torch.equal(third.state_dict()[key], value)
        assert torch.equal(second.state_dict()[key], value)
    assert not any(
        torch.equal(a, b) for a, b in zip(first.parameters(), template.parameters(), strict=True) if a.numel() > 1
    )


def test_tied_weights_stay_tied_in_the_copy():
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
            self.b.weight = self.a.weight

    class Setup:  # what _fresh_model needs of a ModelConfig: hashable, with build()
        def build(self, input_shape, num_classes):
            return Tied()

    model = _fresh_model(Setup(), (4,), 4)
    assert model.a.weight is model.b.weight


def test_a_model_whose_options_cannot_be_cached_is_built_as_before():
    setup = ModelConfig(model="digits-cnn", options=(("width", [8]),))  # a list: unhashable
    built = []

    class Recording(ModelConfig):
        def build(self, input_shape, num_classes, *, seed=None):
            built.append(input_shape)
            return ModelConfig(model="digits-cnn").build(input_shape, num_classes)

    model = _fresh_model(Recording(**vars(setup)), (1, 8, 8), 10)
    assert built == [(1, 8, 8)] and isinstance(model, torch.nn.Module)

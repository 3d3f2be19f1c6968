"""The registry: built-ins and users' functions by import path, and every contract mistake named before a round."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from shared_models.federation import FederatedData
from shared_models.registry import (
    BUILTIN_DATASETS,
    BUILTIN_MODELS,
    ContractError,
    ModelConfig,
    replace_batchnorm,
    resolve_loader,
    resolve_model,
)
from shared_models.run_config import DEFAULT_RUN_CONFIG, options, parse_setting

TASK = """
import numpy as np
import torch
from torch import nn


def build_model(input_shape, num_classes, hidden=16, width=1.0):
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), max(1, int(hidden * width))),
                         nn.ReLU(), nn.Linear(max(1, int(hidden * width)), num_classes))


def build_wrong_output(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), num_classes + 1))


def build_fixed(input_shape, num_classes):
    return nn.Linear(10, num_classes)


def build_no_args():
    return nn.Linear(3, 2)


def build_batchnorm(input_shape, num_classes):
    return nn.Sequential(nn.Conv1d(input_shape[0], 4, 3, padding=1), nn.BatchNorm1d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * input_shape[1], num_classes))


def load_data(data_path, n=40, features=5):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, features)).astype(np.float32), np.arange(n) % 3


def load_mismatched(data_path):
    return np.zeros((10, 4), dtype=np.float32), np.zeros(9, dtype=np.int64)


def load_negative(data_path):
    return np.zeros((4, 2), dtype=np.float32), np.array([0, 1, -1, 0])


def load_dataset(data_path):
    x = torch.randn(6, 2)
    return torch.utils.data.TensorDataset(x, torch.tensor([0, 1, 0, 1, 0, 1]))


def device_preprocessing(**options):
    return {"scale": 0.5}
"""


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    package = tmp_path / "userproj_reg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "task.py").write_text(textwrap.dedent(TASK))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("userproj_reg")]:
        del sys.modules[name]
    if str(tmp_path) in sys.path:
        sys.path.remove(str(tmp_path))


def test_builtin_names_are_import_paths_of_the_same_mechanism():
    assert BUILTIN_MODELS["digits-cnn"] == "shared_models.models:digits_cnn"
    by_name = resolve_model("digits-cnn").build((1, 8, 8), 10)
    by_path = resolve_model("shared_models.models:digits_cnn").build((1, 8, 8), 10)
    assert [p.shape for p in by_name.parameters()] == [p.shape for p in by_path.parameters()]
    data = resolve_loader("digits").load("")
    assert data.input_shape == (1, 8, 8) and data.num_classes == 10
    assert set(BUILTIN_DATASETS) >= {"digits", "breast-cancer", "mnist", "csv"}


def test_user_factory_and_loader_by_import_path_with_options(project: Path):
    factory = resolve_model("userproj_reg.task:build_model", project_dir=project)
    assert factory.accepts_width
    model = factory.build((5,), 3, {"hidden": 8})
    assert model[1].out_features == 8
    data = resolve_loader("userproj_reg.task:load_data", project_dir=project).load("", {"n": 12})
    assert len(data) == 12 and data.num_classes == 3 and data.x.dtype == np.float32


def test_a_torch_dataset_is_read_into_arrays(project: Path):
    data = resolve_loader("userproj_reg.task:load_dataset", project_dir=project).load("")
    assert data.x.shape == (6, 2) and data.y.tolist() == [0, 1, 0, 1, 0, 1]


def test_unimportable_module_is_named():
    with pytest.raises(ContractError, match="cannot import module 'nowhere_xyz.task'.*project-dir"):
        resolve_model("nowhere_xyz.task:build_model")


def test_missing_function_is_named_with_the_closest(project: Path):
    with pytest.raises(ContractError, match="has no function 'build_modle'.*did you mean 'build_model'"):
        resolve_model("userproj_reg.task:build_modle", project_dir=project)


def test_wrong_factory_signature_is_named(project: Path):
    factory = resolve_model("userproj_reg.task:build_no_args", project_dir=project)
    with pytest.raises(ContractError, match=r"build_no_args.*build_model\(input_shape"):
        factory.build((3,), 2)


def test_wrong_output_size_is_named(project: Path):
    factory = resolve_model("userproj_reg.task:build_wrong_output", project_dir=project)
    with pytest.raises(ContractError, match=r"build_wrong_output outputs shape \(4,\).*3 classes"):
        factory.build((5,), 3)


def test_model_that_does_not_take_the_data_shape_is_named(project: Path):
    factory = resolve_model("userproj_reg.task:build_fixed", project_dir=project)
    with pytest.raises(ContractError, match=r"fails on a batch of inputs shaped \(7,\)"):
        factory.build((7,), 3)


def test_loader_length_mismatch_and_bad_labels_are_named(project: Path):
    with pytest.raises(ContractError, match="load_mismatched returned 10 samples.*9 labels"):
        resolve_loader("userproj_reg.task:load_mismatched", project_dir=project).load("")
    with pytest.raises(ContractError, match=r"load_negative returned label -1, outside \[0, 2\)"):
        resolve_loader("userproj_reg.task:load_negative", project_dir=project).load("")
    with pytest.raises(ContractError, match=r"label 2, outside \[0, 2\).*num-classes"):
        resolve_loader("userproj_reg.task:load_data", project_dir=project).load("", num_classes=2)


def test_unknown_builtin_suggests_the_closest():
    with pytest.raises(Exception, match="did you mean 'digits-cnn'"):
        resolve_model("digit-cnn")


def test_device_preprocessing_is_read_from_the_loaders_module(project: Path):
    loader = resolve_loader("userproj_reg.task:load_data", project_dir=project)
    assert loader.device_preprocessing({"n": 3}) == {"scale": 0.5}
    assert resolve_loader("digits").device_preprocessing() == {}


def test_options_flat_and_nested_and_any_name():
    assert options({"model-options.hidden-size": 4, "data-options": {"n": 2}}, "model-options") == {"hidden_size": 4}
    assert options({"data-options": {"n": 2}}, "data-options") == {"n": 2}
    assert parse_setting("model-options.anything", 3) == 3


def test_federated_data_uses_the_users_loader(project: Path):
    config = {
        **DEFAULT_RUN_CONFIG,
        "dataset": "userproj_reg.task:load_data",
        "data-options.n": 50,
        "project-dir": str(project),
    }
    fed = FederatedData.from_run_config(config)
    pool, test = fed.split()
    assert len(pool) + len(test) == 50
    assert len(fed.client_train_set(0, 2)) + len(fed.client_train_set(1, 2)) == len(pool)


def test_batchnorm_replaced_as_opacus_does_and_named():
    from opacus.validators import ModuleValidator

    model = nn.Sequential(nn.Conv2d(1, 48, 3), nn.BatchNorm2d(48), nn.Flatten())
    reference = ModuleValidator.fix(nn.Sequential(nn.Conv2d(1, 48, 3), nn.BatchNorm2d(48), nn.Flatten()))
    replaced = replace_batchnorm(model)
    assert replaced == ["1: BatchNorm2d(48) -> GroupNorm(16 groups, 48 channels)"]
    assert (model[1].num_groups, model[1].num_channels) == (reference[1].num_groups, reference[1].num_channels)
    assert ModuleValidator.validate(model, strict=False) == []


def test_model_config_records_how_to_rebuild(project: Path):
    config = {
        **DEFAULT_RUN_CONFIG,
        "model": "userproj_reg.task:build_batchnorm",
        "project-dir": str(project),
        "dp-fix-model": True,
    }
    setup = ModelConfig.from_run_config(config)
    model = setup.build((2, 6), 3)
    record = setup.record(model)
    assert record["model-import-path"] == "userproj_reg.task:build_batchnorm"
    assert record["dp-replaced-layers"] == ["1: BatchNorm1d(4) -> GroupNorm(4 groups, 4 channels)"]
    assert tuple(model(torch.zeros(3, 2, 6)).shape) == (3, 3)

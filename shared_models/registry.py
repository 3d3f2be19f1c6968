"""The model and data registry: a run config's ``model`` and ``dataset`` resolved to the functions that build them.

Contract changes (part A -> part B; newest first):

- 2: a project's ``pyproject.toml`` is read by ``fedge simulate`` as the experiment (missing keys take fedge's
  defaults, ``project-dir`` = its directory), but ``flwr run .`` hands the ServerApp/ClientApp exactly its
  ``[tool.flwr.app.config]``, and fedge's apps require every key: list them all (``fedge new`` writes them all,
  see simulations/new_project.py ``pyproject_text``). ``dp-fix-model = true`` replaces BatchNorm/LSTM/GRU/RNN for DP.
- 1: as pinned in the brief, plus: option names reach the function with hyphens as underscores
  (``data-options.label-column`` -> ``label_column=``); a loader may also return an
  :class:`~shared_models.data.ArrayDataset` or a ``(x, y)`` tuple subclass with a ``classes`` attribute
  (:class:`shared_models.loaders.contract.LabelledArrays`); the built-in names are the keys of
  :data:`BUILTIN_MODELS` and :data:`BUILTIN_DATASETS` (add a built-in loader there, by import path).

The contract
------------
``model`` and ``dataset`` each take a built-in name (``digits-cnn``, ``digits``) or an import path
``"package.module:function"``. A built-in name is only a key of :data:`BUILTIN_MODELS` / :data:`BUILTIN_DATASETS`,
which map it to an import path: there is one code path for fedge's models and a user's.

- Model factory: ``build_model(input_shape: tuple[int, ...], num_classes: int, **options) -> torch.nn.Module``;
  ``options`` from the run config's ``model-options.NAME`` keys. A factory that accepts ``width`` can be built
  narrower, as a distillation student.
- Data loader: ``load_data(data_path: str, **options) -> (x, y) | torch.utils.data.Dataset``: ``x`` float32 of
  shape ``(N, *input_shape)``, ``y`` integer class ids; a Dataset of ``(x, y)`` pairs is read into arrays;
  ``options`` from ``data-options.NAME`` keys. In a simulation it returns the whole set (fedge partitions it and
  holds out ``test-fraction`` for the server); on a real node that node's data (its ``data-path``).
- Optional, next to the loader: ``device_preprocessing(**options) -> dict``, what the device applies (numpy only)
  before inference, e.g. ``{"scale": 1/255, "standardize": {"mean": [...], "std": [...]}}``; recorded in every
  artifact's description and applied by the agent.
- The user's project directory (run config ``project-dir``) is put on ``sys.path`` before importing, so
  ``my_project.task:build_model`` imports in every process that has the project.

Every mistake is a :class:`ContractError` before any round starts, naming the user's function and what to change.

>>> factory = resolve_model("digits-cnn")
>>> factory.import_path
'shared_models.models:digits_cnn'
>>> model = factory.build((1, 8, 8), 10)
>>> tuple(model(torch.zeros(2, 1, 8, 8)).shape)
(2, 10)
>>> resolve_model("no_such_module_xyz:build_model")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
shared_models.registry.ContractError: cannot import module 'no_such_module_xyz' for model ...
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from shared_models.data import ArrayDataset
from shared_models.errors import DatasetError, SharedModelsError, UnknownModelError

#: Built-in model names and the factory each stands for (see shared_models/models.py).
BUILTIN_MODELS: dict[str, str] = {
    "digits-cnn": "shared_models.models:digits_cnn",
    "mnist-cnn": "shared_models.models:mnist_cnn",
    "mnist-small-cnn": "shared_models.models:mnist_small_cnn",
    "scatternet-linear": "shared_models.models:scatternet_linear",
    "tabular-mlp": "shared_models.models:tabular_mlp",
}

#: Built-in data set names and the loader each stands for.
BUILTIN_DATASETS: dict[str, str] = {
    "digits": "shared_models.builtin_data:digits",
    "breast-cancer": "shared_models.builtin_data:breast_cancer",
    "mnist": "shared_models.builtin_data:mnist",
    "csv": "shared_models.builtin_data:csv",
    "npz": "shared_models.loaders.arrays:load_npz",
    "image-folder": "shared_models.loaders.images:load_image_folder",
    "windows": "shared_models.loaders.series:load_windows",
    "ts": "shared_models.loaders.series:load_ts",
}

FACTORY_SIGNATURE = "build_model(input_shape: tuple[int, ...], num_classes: int, **options) -> torch.nn.Module"
LOADER_SIGNATURE = "load_data(data_path: str, **options) -> tuple[np.ndarray, np.ndarray] | torch.utils.data.Dataset"


class ContractError(SharedModelsError):
    """A user's model factory or data loader that does not keep the contract (import, signature, output)."""


def _builtin_models() -> dict[str, str]:
    """The built-in models: the table above, plus any model registered in shared_models.models by name only."""
    from shared_models.models import MODELS

    table = dict(BUILTIN_MODELS)
    for name in MODELS:
        table.setdefault(name, f"shared_models.models:{python_name(name)}")
    return table


def python_name(name: str) -> str:
    """``mnist-small-cnn`` -> ``mnist_small_cnn``: a built-in name as a Python identifier."""
    return name.replace("-", "_")


def add_to_path(project_dir: str | Path | None) -> None:
    """Put a user's project directory first on ``sys.path`` (once), so its package imports here."""
    if not project_dir:
        return
    path = str(Path(project_dir).expanduser().resolve())
    if Path(path).is_dir() and path not in sys.path:
        sys.path.insert(0, path)


def split_import_path(spec: str, *, what: str) -> tuple[str, str]:
    """``"pkg.mod:function"`` -> (``"pkg.mod"``, ``"function"``); anything else is a :class:`ContractError`."""
    module, colon, attribute = spec.partition(":")
    if not colon or not module.strip() or not attribute.strip() or ":" in attribute:
        table = _builtin_models() if what == "model" else BUILTIN_DATASETS
        close = difflib.get_close_matches(spec, table, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ContractError(
            f"{what} {spec!r} is neither a built-in {what} nor an import path; {hint}give a built-in name "
            f'({", ".join(sorted(table))}) or "package.module:function" (e.g. "my_project.task:'
            f'{"build_model" if what == "model" else "load_data"}")'
        )
    return module.strip(), attribute.strip()


def import_function(spec: str, *, what: str, project_dir: str | Path | None = None) -> Callable[..., Any]:
    """The function an import path names; the module's import errors and a missing name are a :class:`ContractError`
    that names the path and the fix."""
    module_name, attribute = split_import_path(spec, what=what)
    add_to_path(project_dir)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        where = f" (looked in the project directory {project_dir} and the installed packages)" if project_dir else ""
        raise ContractError(
            f"cannot import module {module_name!r} for {what} {spec!r}: {e}; check the spelling, run from the "
            f"project's directory (or set project-dir) and make sure the package has an __init__.py{where}"
        ) from e
    except Exception as e:  # the user's module raised while being imported
        raise ContractError(
            f"importing {module_name!r} for {what} {spec!r} raised {type(e).__name__}: {e}; fix that module"
        ) from e
    function = getattr(module, attribute, None)
    if function is None:
        public = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        close = difflib.get_close_matches(attribute, public, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ContractError(
            f"module {module_name!r} has no function {attribute!r} ({what} {spec!r}); {hint}"
            f"it defines: {', '.join(public) or 'no functions'}"
        )
    if not callable(function):
        raise ContractError(f"{spec} is a {type(function).__name__}, not a function; name the {what}'s function")
    return function


def _check_call(
    function: Callable[..., Any], spec: str, args: tuple[Any, ...], options: Mapping[str, Any], *, signature: str
) -> None:
    """Refuse, before calling it, a function whose parameters cannot take ``args`` and ``options``."""
    try:
        params = inspect.signature(function)
    except (TypeError, ValueError):
        return  # a builtin or C function: let the call speak
    try:
        params.bind(*args, **options)
    except TypeError as e:
        given = ", ".join([*(f"<{type(a).__name__}>" for a in args), *(f"{k}=" for k in options)])
        raise ContractError(
            f"{spec} has the signature {spec.partition(':')[2] or spec}{params} but fedge calls it as ({given}): {e}. "
            f"Give it the contract's signature, {signature}"
            + (", or remove the options it does not take from the run config" if options else "")
        ) from None


@dataclass(frozen=True)
class ModelFactory:
    """A model factory resolved from a run config's ``model``: the name as given, its import path, the function."""

    spec: str
    import_path: str
    function: Callable[..., nn.Module] = field(repr=False)

    @property
    def accepts_width(self) -> bool:
        """Whether the factory takes ``width`` (a multiplier of its channels and units): then it can be built
        narrower as a distillation student."""
        try:
            params = inspect.signature(self.function).parameters
        except (TypeError, ValueError):
            return False
        return "width" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())

    def build(
        self,
        input_shape: tuple[int, ...] | list[int],
        num_classes: int,
        options: Mapping[str, Any] | None = None,
        *,
        width: float | None = None,
        seed: int | None = None,
        check: bool = True,
    ) -> nn.Module:
        """Build the model; with ``check``, also run one forward pass on a zero batch and check the output size."""
        shape = tuple(int(d) for d in input_shape)
        kwargs = dict(options or {})
        if width is not None:
            kwargs["width"] = float(width)
        _check_call(self.function, self.import_path, (shape, int(num_classes)), kwargs, signature=FACTORY_SIGNATURE)
        if seed is not None:
            torch.manual_seed(seed)
        try:
            model = self.function(shape, int(num_classes), **kwargs)
        except SharedModelsError:
            raise
        except Exception as e:
            raise ContractError(
                f"the model factory {self.import_path} raised {type(e).__name__}: {e} "
                f"(called with input_shape={shape}, num_classes={num_classes}, options {kwargs or '{}'}); fix the "
                "factory or the model-options in the run config"
            ) from e
        if not isinstance(model, nn.Module):
            raise ContractError(
                f"the model factory {self.import_path} returned a {type(model).__name__}, not a torch.nn.Module; "
                "return the model itself"
            )
        if check:
            check_model_output(model, shape, int(num_classes), where=self.import_path)
        return model


def check_model_output(model: nn.Module, input_shape: tuple[int, ...], num_classes: int, *, where: str) -> None:
    """One forward pass on a zero batch of two: the model must take ``input_shape`` and give ``num_classes`` scores
    per sample."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros((2, *input_shape), dtype=torch.float32))
    except Exception as e:
        raise ContractError(
            f"the model from {where} fails on a batch of inputs shaped {input_shape} (the data's sample shape): "
            f"{type(e).__name__}: {e}. Make the model take (batch, {', '.join(map(str, input_shape))}) inputs, or "
            "change the loader so its samples have the shape the model expects"
        ) from e
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise ContractError(
            f"the model from {where} returns a {type(out).__name__}; return one tensor of class scores "
            f"(batch, {num_classes})"
        )
    if tuple(out.shape) != (2, num_classes):
        raise ContractError(
            f"the model from {where} outputs shape {tuple(out.shape)[1:]} per batch of 2 {tuple(out.shape)} but the "
            f"data has {num_classes} classes: make its last layer output num_classes ({num_classes}) scores, shape "
            f"(batch, {num_classes})"
        )


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The run config's model keys, parsed once: ``model``, ``model-options.*``, ``project-dir`` and whether
    BatchNorm layers are replaced for DP (``dp`` and ``dp-fix-model``). The server, the clients and ``fedge package``
    build the global model through it, so all of them build the same architecture."""

    model: str
    options: tuple[tuple[str, Any], ...] = ()
    project_dir: str = ""
    fix_for_dp: bool = False

    @classmethod
    def from_run_config(cls, config: Mapping[str, Any]) -> ModelConfig:
        from shared_models.run_config import options, setting

        return cls(
            model=setting(config, "model"),
            options=tuple(sorted(options(config, "model-options").items())),
            project_dir=setting(config, "project-dir"),
            fix_for_dp=bool(setting(config, "dp") and setting(config, "dp-fix-model")),
        )

    @property
    def factory(self) -> ModelFactory:
        return resolve_model(self.model, project_dir=self.project_dir or None)

    def build(
        self, input_shape: tuple[int, ...] | list[int], num_classes: int, *, seed: int | None = None
    ) -> nn.Module:
        """The model, checked (one forward pass), with its BatchNorm layers replaced when ``fix_for_dp``."""
        shape = tuple(int(d) for d in input_shape)
        model = self.factory.build(shape, num_classes, dict(self.options), seed=seed)
        if self.fix_for_dp:
            replace_batchnorm(model)
        return model

    def record(self, model: nn.Module | None = None) -> dict[str, Any]:
        """What the run record keeps so ``fedge package`` can rebuild the model: the import path, the options, the
        project directory and (given the built model) the layers replaced for DP."""
        factory = self.factory
        return {
            "model": self.model,
            "model-import-path": factory.import_path,
            "model-options": dict(self.options),
            "project-dir": str(Path(self.project_dir).expanduser().resolve()) if self.project_dir else "",
            "dp-fix-model": self.fix_for_dp,
            **({"dp-replaced-layers": self.replaced_layers(model)} if model is not None else {}),
        }

    def replaced_layers(self, model: nn.Module) -> list[str]:
        """Every layer replaced for DP: BatchNorm here (in every copy of the model), recurrent layers on the
        clients (Opacus's DP versions with the same weights; the global model keeps torch's)."""
        recurrent = [
            f"{name}: {type(m).__name__} -> DP{type(m).__name__} on the clients (weights kept)"
            for name, m in model.named_modules()
            if type(m) in (nn.LSTM, nn.GRU, nn.RNN)
        ]
        return [*getattr(model, FIXED_LAYERS_ATTRIBUTE, []), *(recurrent if self.fix_for_dp else [])]


#: The attribute :func:`replace_batchnorm` leaves on a model: the layers it replaced, as readable lines.
FIXED_LAYERS_ATTRIBUTE = "fedge_dp_replaced_layers"
BATCHNORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def batchnorm_layers(model: nn.Module) -> list[str]:
    """The names of ``model``'s BatchNorm layers (which DP-SGD cannot train: a sample's output depends on the
    others in its batch)."""
    return [name for name, module in model.named_modules() if isinstance(module, BATCHNORM_TYPES)]


def replace_batchnorm(model: nn.Module) -> list[str]:
    """Replace every BatchNorm layer by a GroupNorm over the same channels, as Opacus's ``ModuleValidator.fix``
    does (``gcd(32, channels)`` groups, affine as the BatchNorm was), in place; the replaced layers, one line each
    (``"features.1: BatchNorm2d(16) -> GroupNorm(16 groups)"``), also kept on the model for the run record.

    Torch only, so the server and ``fedge package`` (which do not import Opacus) build the same architecture as
    the clients.

    >>> model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
    >>> replace_batchnorm(model)
    ['1: BatchNorm2d(8) -> GroupNorm(8 groups, 8 channels)']
    """
    replaced = []
    for name in batchnorm_layers(model):
        old = model.get_submodule(name)
        groups = math.gcd(32, old.num_features)
        model.set_submodule(name, nn.GroupNorm(groups, old.num_features, affine=old.affine))
        replaced.append(
            f"{name}: {type(old).__name__}({old.num_features}) -> GroupNorm({groups} groups, {old.num_features} "
            "channels)"
        )
    setattr(model, FIXED_LAYERS_ATTRIBUTE, [*getattr(model, FIXED_LAYERS_ATTRIBUTE, []), *replaced])
    return replaced


def resolve_model(spec: str, *, project_dir: str | Path | None = None) -> ModelFactory:
    """The factory a run config's ``model`` names: a built-in name or ``"package.module:function"``."""
    spec = str(spec).strip()
    table = _builtin_models()
    import_path = table.get(spec, spec)
    if import_path == spec and ":" not in spec:
        close = difflib.get_close_matches(spec, table, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UnknownModelError(
            f"unknown model {spec!r}; {hint}choose one of: {', '.join(sorted(table))}, or name your own factory "
            'as "package.module:function" (e.g. model = "my_project.task:build_model")'
        )
    return ModelFactory(spec, import_path, import_function(import_path, what="model", project_dir=project_dir))


@dataclass(frozen=True)
class DataLoaderSpec:
    """A data loader resolved from a run config's ``dataset``: the name as given, its import path, the function."""

    spec: str
    import_path: str
    function: Callable[..., Any] = field(repr=False)

    @property
    def module(self) -> Any:
        return sys.modules.get(self.import_path.partition(":")[0])

    def load(self, data_path: str, options: Mapping[str, Any] | None = None, *, num_classes: int = 0) -> ArrayDataset:
        """Call the loader and check what it returns: x and y of equal length, y whole class ids in
        ``[0, num_classes)`` (``num_classes`` 0: as many as the labels, or the loader's class list, say)."""
        kwargs = dict(options or {})
        _check_call(self.function, self.import_path, (str(data_path),), kwargs, signature=LOADER_SIGNATURE)
        try:
            result = self.function(str(data_path), **kwargs)
        except SharedModelsError:
            raise
        except Exception as e:
            raise ContractError(
                f"the data loader {self.import_path} raised {type(e).__name__}: {e} (called with "
                f"data_path={str(data_path)!r}, options {kwargs or '{}'}); fix the loader, data-path or data-options"
            ) from e
        return as_array_dataset(result, name=self.spec, where=self.import_path, num_classes=num_classes)

    def device_preprocessing(self, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The loader module's ``device_preprocessing(**options)`` spec, or ``{}`` where it has none."""
        function = getattr(self.module, "device_preprocessing", None)
        if function is None:
            return {}
        accepted = inspect.signature(function).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
        kwargs = {k: v for k, v in dict(options or {}).items() if takes_any or k in accepted}
        try:
            spec = function(**kwargs)
        except Exception as e:
            raise ContractError(
                f"{self.import_path.partition(':')[0]}:device_preprocessing raised {type(e).__name__}: {e}"
            ) from e
        where = f"{self.import_path.partition(':')[0]}:device_preprocessing"
        if not isinstance(spec, dict):
            raise ContractError(f'{where} returned a {type(spec).__name__}; return a dict such as {{"scale": 0.5}}')
        try:
            return json.loads(json.dumps(spec, allow_nan=False))
        except (TypeError, ValueError) as e:
            raise ContractError(f"{where} returned a dict that is not plain JSON ({e}); use lists and numbers") from e


def resolve_loader(spec: str, *, project_dir: str | Path | None = None) -> DataLoaderSpec:
    """The loader a run config's ``dataset`` names: a built-in name or ``"package.module:function"``."""
    spec = str(spec).strip()
    import_path = BUILTIN_DATASETS.get(spec, spec)
    if import_path == spec and ":" not in spec:
        close = difflib.get_close_matches(spec, BUILTIN_DATASETS, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise DatasetError(
            f"unknown data set {spec!r}; {hint}choose one of: {', '.join(sorted(BUILTIN_DATASETS))}, or name your "
            'own loader as "package.module:function" (e.g. dataset = "my_project.task:load_data")'
        )
    return DataLoaderSpec(spec, import_path, import_function(import_path, what="data set", project_dir=project_dir))


def _materialize(dataset: torch.utils.data.Dataset, *, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        size = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        raise ContractError(
            f"the Dataset from {where} has no len(); return a map-style Dataset or (x, y) arrays"
        ) from None
    xs, ys = [], []
    for i in range(size):
        item = dataset[i]
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise ContractError(
                f"item {i} of the Dataset from {where} is a {type(item).__name__}; each item must be an (x, y) pair"
            )
        x, y = item
        xs.append(np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float32))
        ys.append(int(y.item() if isinstance(y, torch.Tensor) else y))
    if not xs:
        return np.zeros((0,), dtype=np.float32), np.zeros((0,), dtype=np.int64)
    shapes = {a.shape for a in xs}
    if len(shapes) > 1:
        raise ContractError(f"the Dataset from {where} holds samples of different shapes {sorted(shapes)[:3]}")
    return np.stack(xs), np.asarray(ys, dtype=np.int64)


def as_array_dataset(result: Any, *, name: str, where: str, num_classes: int = 0) -> ArrayDataset:
    """What a loader returned, checked and as an :class:`ArrayDataset`."""
    if isinstance(result, ArrayDataset):
        x, y, classes = result.x, result.y, result.num_classes
        name = result.name
    elif isinstance(result, torch.utils.data.Dataset):
        (x, y), classes = _materialize(result, where=where), 0
    elif isinstance(result, tuple) and len(result) == 2:
        x, y = result
        classes = len(getattr(result, "classes", ()) or ())
    else:
        raise ContractError(
            f"the data loader {where} returned a {type(result).__name__}; return (x, y) arrays or a torch Dataset "
            f"of (x, y) pairs: {LOADER_SIGNATURE}"
        )
    x = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x)
    y = np.asarray(y.detach().cpu() if isinstance(y, torch.Tensor) else y)
    if len(x) != len(y):
        raise ContractError(
            f"the data loader {where} returned {len(x)} samples (x) but {len(y)} labels (y); "
            "return one label per sample"
        )
    if len(x) == 0:
        raise ContractError(f"the data loader {where} returned no samples; check data-path and data-options")
    if x.ndim < 2:
        raise ContractError(
            f"the data loader {where} returned x of shape {x.shape}; samples go along the first axis: "
            "(N, features) for a table, (N, channels, height, width) for images, (N, steps, features) for series"
        )
    if not np.issubdtype(x.dtype, np.number) and x.dtype != np.bool_:
        raise ContractError(f"the data loader {where} returned x of type {x.dtype}; return numbers (float32)")
    if y.ndim != 1:
        raise ContractError(
            f"the data loader {where} returned y of shape {y.shape}; return one integer class id per sample, shape (N,)"
        )
    if np.issubdtype(y.dtype, np.floating) and not (np.isfinite(y).all() and (y == np.round(y)).all()):
        raise ContractError(f"the data loader {where} returned labels that are not whole numbers; y must be class ids")
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating) or y.dtype == np.bool_):
        raise ContractError(
            f"the data loader {where} returned labels of type {y.dtype}; y must be integer class ids 0..K-1 "
            "(map names to ids in the loader)"
        )
    y = y.astype(np.int64)
    total = int(num_classes) or int(classes) or int(y.max()) + 1
    if y.min() < 0 or y.max() >= total:
        bad = int(y.min()) if y.min() < 0 else int(y.max())
        raise ContractError(
            f"the data loader {where} returned label {bad}, outside [0, {total}) "
            f"({'num-classes' if num_classes else 'the classes it lists'} = {total}); labels must be class ids "
            "0..num-classes-1: relabel in the loader or set num-classes in the run config"
        )
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ContractError(f"the data loader {where} returned x with NaN or infinite values; impute or drop them")
    return ArrayDataset(name, x, y, total)


def check_data_fits(data: ArrayDataset, input_shape: tuple[int, ...], *, where: str) -> None:
    """Refuse data whose sample shape is not the model's input shape."""
    if tuple(data.input_shape) != tuple(input_shape):
        raise ContractError(
            f"the data loader {where} returned samples of shape {tuple(data.input_shape)} but the model takes "
            f"{tuple(input_shape)}; every node's loader must return samples of one shape (resize or pad them)"
        )


__all__ = [
    "BUILTIN_DATASETS",
    "BUILTIN_MODELS",
    "ContractError",
    "DataLoaderSpec",
    "ModelFactory",
    "add_to_path",
    "as_array_dataset",
    "check_data_fits",
    "check_model_output",
    "resolve_loader",
    "resolve_model",
]

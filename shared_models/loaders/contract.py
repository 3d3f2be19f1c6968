"""What every built-in loader shares with a user's ``load_data``: the signature, its options, the class list.

A loader is ``load_data(data_path: str, **options) -> (x, y)``; its options arrive from the run config's
``data-options.NAME`` keys as Flower's scalars (str, int, float, bool). :func:`data_loader` lets a loader declare
plain keyword arguments and still take ``data-options.label-column`` (a hyphen becomes an underscore), and turns an
option it does not have into a :class:`~shared_models.errors.DatasetError` that names the closest one.

Classes must mean the same on every node: a node that holds only some of them must still number them as the
federation does. :func:`class_ids` maps label names to ids with the federation's list (``classes`` option) or,
without one, with the sorted names it sees; :class:`LabelledArrays` is the ``(x, y)`` pair that also records that
list, so it can go in the run record.

>>> ids, names = class_ids(["walk", "run", "walk"], classes=("stand", "run", "walk"), source="demo")
>>> ids.tolist(), names
([2, 1, 2], ('stand', 'run', 'walk'))
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import numpy as np

from shared_models.errors import DatasetError

Loader = TypeVar("Loader", bound=Callable[..., Any])


class LabelledArrays(tuple):
    """``(x, y)`` as the loader contract asks, plus ``classes``: the class names in id order (empty if the labels
    were ids already). Unpacks like a plain pair: ``x, y = load_image_folder(path)``."""

    classes: tuple[str, ...]

    def __new__(cls, x: np.ndarray, y: np.ndarray, classes: Sequence[str] = ()) -> LabelledArrays:
        if len(x) != len(y):
            raise DatasetError(f"{len(x)} samples but {len(y)} labels; every sample needs one label")
        pair = super().__new__(cls, (x, y))
        pair.classes = tuple(classes)
        return pair

    @property
    def x(self) -> np.ndarray:
        return self[0]

    @property
    def y(self) -> np.ndarray:
        return self[1]


def split_list(value: str | Sequence[str]) -> tuple[str, ...]:
    """A list option: Flower's run config holds only scalars, so a list is one comma-separated string."""
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    return tuple(str(item) for item in value)


def class_ids(labels: Iterable[str], *, classes: Sequence[str] = (), source: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Class ids for ``labels`` (names): positions in ``classes`` (the federation's list) or, without it, in the
    sorted set of names seen here. A name outside ``classes`` is an error naming it."""
    labels = [str(label) for label in labels]
    names = tuple(classes) or tuple(sorted(set(labels)))
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise DatasetError(f"data-options.classes names {repeated} more than once; list each class once")
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise DatasetError(
            f"{source}: class {unknown[0]!r} is not one of the federation's classes {list(names)}"
            + (f" (also {unknown[1:]})" if len(unknown) > 1 else "")
            + "; add it to data-options.classes (the same list on every node) or remove that data"
        )
    return np.array([index[label] for label in labels], dtype=np.int64), names


def integer_labels(values: np.ndarray, *, source: str) -> np.ndarray:
    """Labels that must already be class ids: non-negative whole numbers, as int64."""
    values = np.asarray(values)
    if values.dtype.kind in "iu":
        ids = values.astype(np.int64)
    elif values.dtype.kind in "fb":
        if not np.isfinite(values).all() or (values != np.round(values)).any():
            raise DatasetError(f"{source}: labels must be whole numbers (class ids 0..K-1), got {values[:5]}...")
        ids = values.astype(np.int64)
    else:
        raise DatasetError(
            f"{source}: labels of type {values.dtype} are not class ids; use integers 0..K-1, or names with "
            "data-options.classes"
        )
    if ids.size and ids.min() < 0:
        raise DatasetError(f"{source}: label {int(ids.min())} is negative; class ids are 0..K-1")
    return ids


def data_loader(function: Loader) -> Loader:
    """Make ``function`` a loader that takes run-config options: ``label-column`` reaches ``label_column``, and
    an option it does not have is a clear error (with the closest name) instead of a TypeError."""
    accepted = [
        name for name, p in inspect.signature(function).parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]

    @functools.wraps(function)
    def load(data_path: str, **options: Any) -> Any:
        given = {key.replace("-", "_"): value for key, value in options.items()}
        unknown = [key for key in given if key not in accepted]
        if unknown:
            key = unknown[0]
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f"did you mean data-options.{close[0].replace('_', '-')}? " if close else ""
            raise DatasetError(
                f"{function.__name__} has no option {key.replace('_', '-')!r}; {hint}its options are "
                + ", ".join(a.replace("_", "-") for a in accepted)
            )
        return function(str(data_path), **given)

    return load  # type: ignore[return-value]

"""Data sets: the built-in scikit-learn sets, MNIST from an IDX directory, and a node's CSV table.

Every loader returns an :class:`ArrayDataset` of float32 features and int64 labels, ready for a
``TensorDataset``. Nothing here downloads anything.
"""

from __future__ import annotations

import csv
import functools
import gzip
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from shared_models.errors import DatasetError, SchemaMismatchError

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
MISSING_MARKERS = frozenset({"", "?", "na", "nan", "null", "none"})


@dataclass(frozen=True)
class ArrayDataset:
    """Features ``x`` (float32, first axis = samples) and labels ``y`` (int64, values 0..num_classes-1)."""

    name: str
    x: np.ndarray
    y: np.ndarray
    num_classes: int

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise DatasetError(f"{self.name}: {len(self.x)} feature rows but {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def subset(self, indices: Sequence[int] | np.ndarray) -> ArrayDataset:
        idx = np.asarray(indices, dtype=np.int64)
        return ArrayDataset(self.name, self.x[idx], self.y[idx], self.num_classes)

    def loader(self, batch_size: int, *, shuffle: bool = False, seed: int = 0) -> DataLoader:
        dataset = TensorDataset(torch.from_numpy(self.x), torch.from_numpy(self.y))
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


def train_test_split(
    data: ArrayDataset, *, test_fraction: float | None = None, test_size: int | None = None, seed: int = 0
) -> tuple[ArrayDataset, ArrayDataset]:
    """Split once, reproducibly: the same seed gives the same split in every process."""
    n = len(data)
    if test_size is None:
        if test_fraction is None or not 0.0 < test_fraction < 1.0:
            raise DatasetError(f"test fraction must be in (0, 1), got {test_fraction}")
        test_size = int(round(n * test_fraction))
    if not 0 < test_size < n:
        raise DatasetError(f"{data.name}: cannot hold out {test_size} of {n} samples")
    order = np.random.default_rng(seed).permutation(n)
    return data.subset(np.sort(order[test_size:])), data.subset(np.sort(order[:test_size]))


def load_digits() -> ArrayDataset:
    """scikit-learn's 8x8 digits (1,797 images), scaled to [0, 1], shape (N, 1, 8, 8)."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    return ArrayDataset("digits", np.ascontiguousarray(x), bunch.target.astype(np.int64), 10)


def load_breast_cancer() -> ArrayDataset:
    """scikit-learn's breast cancer table (569 rows, 30 features), standardised per feature."""
    from sklearn.datasets import load_breast_cancer as sk_load_breast_cancer

    bunch = sk_load_breast_cancer()
    x = bunch.data.astype(np.float32)
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-8)
    return ArrayDataset("breast-cancer", x.astype(np.float32), bunch.target.astype(np.int64), 2)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as e:
        raise DatasetError(f"cannot read IDX file {path}: {e}; is it a complete (gzipped) IDX file?") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != math.prod(dims):
        raise DatasetError(f"{path}: header promises {math.prod(dims)} values but holds {data.size}; truncated?")
    return data.reshape(dims)


def _find_idx(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz", directory / "MNIST" / "raw" / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


@functools.lru_cache(maxsize=4)
def _load_mnist_cached(directory: str) -> tuple[np.ndarray, np.ndarray]:
    root = Path(directory)
    xs, ys = [], []
    for prefix in ("train", "t10k"):
        images = _find_idx(root, f"{prefix}-images-idx3-ubyte")
        labels = _find_idx(root, f"{prefix}-labels-idx1-ubyte")
        if images is None or labels is None:
            continue
        xs.append(_read_idx(images))
        ys.append(_read_idx(labels))
    if not xs:
        raise DatasetError(
            f"no MNIST IDX files in {root}: expected t10k-images-idx3-ubyte(.gz) and t10k-labels-idx1-ubyte(.gz) "
            "(and/or the train-* pair); pass --data-path pointing at that directory"
        )
    x = np.concatenate(xs).astype(np.float32) / 255.0
    x = ((x - MNIST_MEAN) / MNIST_STD)[:, None, :, :]
    y = np.concatenate(ys).astype(np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def load_mnist(directory: str | Path) -> ArrayDataset:
    """MNIST from a directory of IDX files (gzipped or not), normalised, shape (N, 1, 28, 28).

    Reads every split it finds there (train-* and t10k-*). The decoded arrays are read-only and memoised per
    directory, so a simulation worker that serves many clients decodes the files once.
    """
    directory = Path(directory).expanduser().resolve()
    if not directory.is_dir():
        raise DatasetError(f"MNIST directory {directory} does not exist; pass --data-path pointing at the IDX files")
    x, y = _load_mnist_cached(str(directory))
    return ArrayDataset("mnist", x, y, 10)


def _check_schema(path: Path, columns: list[str], expected: Sequence[str], header: bool) -> list[str]:
    """The table's column names, checked against the federation's schema before any value is parsed.

    A file without a header takes the schema's names when it has as many columns; one with a header must have the
    schema's names in the schema's order. Anything else is refused with :class:`SchemaMismatchError`.
    """
    if not expected or list(columns) == list(expected):
        return list(columns)
    if not header:
        if len(columns) == len(expected):
            return list(expected)
        raise SchemaMismatchError(
            f"{path} has {len(columns)} columns but the federation's schema has {len(expected)} "
            f"({', '.join(expected)}); this node's table does not fit the federation's model. "
            "Give this node a file with the same columns, in the same order, as the other nodes"
        )
    missing = [c for c in expected if c not in columns]
    unexpected = [c for c in columns if c not in expected]
    detail = f"missing {missing or 'none'}, unexpected {unexpected or 'none'}"
    if not missing and not unexpected:
        detail = f"same names in another order: {columns}"
    raise SchemaMismatchError(
        f"{path}: its columns do not match the federation's schema ({detail}); expected {list(expected)}. "
        "Rename or reorder the columns of this node's file (or fix csv-columns in the run config)"
    )


def standardize(x: np.ndarray) -> np.ndarray:
    """Each feature to mean 0 and standard deviation 1 with this table's own statistics (constant columns to 0).

    Only the node's own rows are used, so no statistic leaves the node.
    """
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    return ((x - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)


def load_csv(
    path: str | Path,
    *,
    label_column: str = "label",
    header: bool = True,
    columns: Sequence[str] = (),
    binarize_at: float = 0.0,
    num_classes: int = 0,
    standardize_features: bool = False,
) -> ArrayDataset:
    """A node's table: one label column, numeric features, missing values allowed.

    Missing values (empty, ``?``, ``NA``, ``nan``) are imputed with the column mean of this file only, so no
    statistics leave the node. Labels must be integers ``0..K-1`` (``K`` from the largest label seen, or
    ``num_classes``). Without a header the columns are named by the schema (``columns``) if one is given, else by
    position ``"0"``, ``"1"``, ...

    ``columns`` is the federation's schema (every column, label included, in order): a file that differs is refused
    with :class:`SchemaMismatchError` before any value is parsed. ``binarize_at`` > 0 turns the label into
    ``label >= binarize_at`` (the heart disease files: ``num`` 0-4, disease when >= 1). ``standardize_features``
    scales every feature with this file's own mean and standard deviation.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"CSV file {path} does not exist; check the node's data path")
    with path.open(newline="", encoding="utf-8") as fh:
        rows = [row for row in csv.reader(fh) if any(cell.strip() for cell in row)]
    if not rows:
        raise DatasetError(f"{path} is empty; a node needs at least one row of data")
    names = [c.strip() for c in rows[0]] if header else [str(i) for i in range(len(rows[0]))]
    names = _check_schema(path, names, columns, header)
    body = rows[1:] if header else rows
    if label_column not in names:
        raise DatasetError(
            f"{path} has no label column {label_column!r}; its columns are {names}. "
            "Name the label column in the config (label-column) or add it to the file"
        )
    label_idx = names.index(label_column)
    values = np.full((len(body), len(names)), np.nan, dtype=np.float64)
    for r, row in enumerate(body, start=2 if header else 1):
        if len(row) != len(names):
            what = "the header has" if header else "the first row has"
            raise DatasetError(f"{path}, line {r}: {len(row)} fields but {what} {len(names)}")
        for c, cell in enumerate(row):
            cell = cell.strip()
            if cell.lower() in MISSING_MARKERS:
                continue
            try:
                values[r - (2 if header else 1), c] = float(cell)
            except ValueError:
                raise DatasetError(
                    f"{path}, line {r}, column {names[c]!r}: {cell!r} is not a number; "
                    "features must be numeric (encode categories as numbers)"
                ) from None
    if not body:
        raise DatasetError(f"{path} has a header but no data rows")
    labels = values[:, label_idx]
    if np.isnan(labels).any():
        raise DatasetError(f"{path}: {int(np.isnan(labels).sum())} rows have no label in column {label_column!r}")
    if binarize_at > 0:
        labels = (labels >= binarize_at).astype(np.float64)
    if (labels != np.round(labels)).any() or labels.min() < 0:
        raise DatasetError(f"{path}: labels in {label_column!r} must be non-negative integers (class indices)")
    classes = int(labels.max()) + 1
    if num_classes and classes > num_classes:
        raise DatasetError(
            f"{path}: label {classes - 1} in {label_column!r} is outside the federation's {num_classes} classes "
            f"(0..{num_classes - 1}); check num-classes, or label-binarize-at for a yes/no label"
        )
    features = np.delete(values, label_idx, axis=1)
    means = np.nanmean(np.where(np.isnan(features).all(axis=0), 0.0, features), axis=0)
    features = np.where(np.isnan(features), means, features)
    if standardize_features:
        features = standardize(features)
    num = num_classes or (2 if binarize_at > 0 else classes)
    return ArrayDataset(path.stem, features.astype(np.float32), labels.astype(np.int64), num)


BUILTIN_DATASETS = ("digits", "breast-cancer", "mnist", "csv")


@dataclass(frozen=True, kw_only=True)
class CsvFormat:
    """How a node's CSV table reads: its label, header, the federation's schema and preprocessing."""

    label_column: str = "label"
    header: bool = True
    columns: tuple[str, ...] = ()
    binarize_at: float = 0.0
    num_classes: int = 0
    standardize: bool = True

    def load(self, path: str | Path) -> ArrayDataset:
        return load_csv(
            path,
            label_column=self.label_column,
            header=self.header,
            columns=self.columns,
            binarize_at=self.binarize_at,
            num_classes=self.num_classes,
            standardize_features=self.standardize,
        )


def load_dataset(
    name: str, *, data_path: str | None = None, label_column: str = "label", csv_format: CsvFormat | None = None
) -> ArrayDataset:
    """Load a data set by name (``digits``, ``breast-cancer``, ``mnist`` from ``data_path``, ``csv`` file)."""
    if name == "digits":
        return load_digits()
    if name == "breast-cancer":
        return load_breast_cancer()
    if name == "mnist":
        if not data_path:
            raise DatasetError("data set 'mnist' needs a data path: the directory holding the IDX files")
        return load_mnist(data_path)
    if name == "csv":
        if not data_path:
            raise DatasetError("data set 'csv' needs a data path: the node's CSV file")
        return (csv_format or CsvFormat(label_column=label_column, standardize=False)).load(data_path)
    raise DatasetError(f"unknown data set {name!r}; choose one of: {', '.join(BUILTIN_DATASETS)}")

"""Data sets: the built-in scikit-learn sets, MNIST from an IDX directory, and a node's CSV table.

Every loader returns an :class:`ArrayDataset` of float32 features and int64 labels, ready for a
``TensorDataset``. Nothing here downloads anything.
"""

from __future__ import annotations

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

from shared_models.errors import DatasetError
from shared_models.loaders.tables import MISSING_MARKERS, read_table, standardize  # noqa: F401  (re-exported)

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


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

    def with_classes(self, num_classes: int) -> ArrayDataset:
        """The same data numbered in the federation's ``num_classes`` classes (a node may hold only some of them);
        a label outside ``0..num_classes-1`` is refused by name. ``0`` (not agreed) keeps this data's own count."""
        if not num_classes or num_classes == self.num_classes:
            return self
        if len(self.y) and int(self.y.max()) >= num_classes:
            label = int(self.y.max())
            raise DatasetError(
                f"{self.name}: label {label} ({int((self.y >= num_classes).sum())} samples) is outside the "
                f"federation's {num_classes} classes (0..{num_classes - 1}, the server's data set); set num-classes "
                "in the run config to the federation's count, or relabel or remove those samples on this node"
            )
        return ArrayDataset(self.name, self.x, self.y, num_classes)

    def subset(self, indices: Sequence[int] | np.ndarray) -> ArrayDataset:
        idx = np.asarray(indices, dtype=np.int64)
        return ArrayDataset(self.name, self.x[idx], self.y[idx], self.num_classes)

    def sample(self, max_samples: int, *, seed: int = 0) -> ArrayDataset:
        """At most ``max_samples`` of this data, a seeded subset kept in order (all of it when it has no more): the
        samples ``fedge accept`` measures a site on, the same whether the site is simulated or a real node."""
        if len(self) <= max_samples:
            return self
        return self.subset(np.sort(np.random.default_rng(seed).permutation(len(self))[:max_samples]))

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


def load_csv(
    path: str | Path,
    *,
    label_column: str = "label",
    header: bool = True,
    columns: Sequence[str] = (),
    binarize_at: float = 0.0,
    num_classes: int = 0,
    standardize_features: bool = False,
    encoding: str = "utf-8-sig",
    delimiter: str = "",
) -> ArrayDataset:
    """A node's table: one label column, numeric features, missing values allowed (read by
    :func:`shared_models.loaders.tables.read_table`, which documents every option).

    ``num_classes`` is the federation's class count: a node whose labels are a subset still numbers its classes as
    the others do, and a label outside it is refused by name.
    """
    table = read_table(
        path,
        label_column=label_column,
        header=header,
        columns=columns,
        binarize_at=binarize_at,
        num_classes=num_classes,
        standardize_features=standardize_features,
        encoding=encoding,
        delimiter=delimiter,
    )
    return ArrayDataset(Path(path).stem, table.x, table.y, table.num_classes)


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
    encoding: str = "utf-8-sig"
    delimiter: str = ""

    def load(self, path: str | Path) -> ArrayDataset:
        return load_csv(
            path,
            label_column=self.label_column,
            header=self.header,
            columns=self.columns,
            binarize_at=self.binarize_at,
            num_classes=self.num_classes,
            standardize_features=self.standardize,
            encoding=self.encoding,
            delimiter=self.delimiter,
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

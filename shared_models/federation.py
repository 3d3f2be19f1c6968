"""Who holds which data in a federation: the server's held-out split and each client's share.

Every process recomputes the same split from the same :class:`FederatedData` description and seed, so no
index list travels over the wire.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared_models.data import ArrayDataset, CsvFormat, load_dataset, train_test_split
from shared_models.errors import DatasetError, PartitionError
from shared_models.partition import partition_indices


@dataclass(frozen=True, kw_only=True)
class FederatedData:
    """A data set, how it is split between the server's test set and the clients, and how clients share it."""

    dataset: str
    data_path: str = ""
    label_column: str = "label"
    partitioner: str = "iid"
    alpha: float = 0.5
    shards_per_partition: int = 2
    test_fraction: float = 0.2
    seed: int = 0
    csv_header: bool = True
    csv_columns: tuple[str, ...] = ()
    label_binarize_at: float = 0.0
    num_classes: int = 0
    standardize: bool = True

    def __post_init__(self) -> None:
        if self.partitioner == "dirichlet" and not self.alpha > 0:
            raise PartitionError(f"Dirichlet alpha must be > 0, got {self.alpha}; smaller alpha means stronger skew")

    @classmethod
    def from_run_config(cls, config: Mapping[str, Any]) -> FederatedData:
        """Read the data keys of a Flower run config (``dataset``, ``data-path``, ``partitioner``, ...)."""
        return cls(
            dataset=str(config.get("dataset", "digits")),
            data_path=str(config.get("data-path", "")),
            label_column=str(config.get("label-column", "label")),
            partitioner=str(config.get("partitioner", "iid")),
            alpha=float(config.get("alpha", 0.5)),
            shards_per_partition=int(config.get("shards-per-client", 2)),
            test_fraction=float(config.get("test-fraction", 0.2)),
            seed=int(config.get("seed", 0)),
            csv_header=bool(config.get("csv-header", True)),
            csv_columns=tuple(c.strip() for c in str(config.get("csv-columns", "")).split(",") if c.strip()),
            label_binarize_at=float(config.get("label-binarize-at", 0.0)),
            num_classes=int(config.get("num-classes", 0)),
            standardize=bool(config.get("standardize", True)),
        )

    @property
    def csv_format(self) -> CsvFormat:
        return CsvFormat(
            label_column=self.label_column,
            header=self.csv_header,
            columns=self.csv_columns,
            binarize_at=self.label_binarize_at,
            num_classes=self.num_classes,
            standardize=self.standardize,
        )

    def _load(self, data_path: str | None = None) -> ArrayDataset:
        return load_dataset(self.dataset, data_path=data_path or self.data_path, csv_format=self.csv_format)

    def split(self) -> tuple[ArrayDataset, ArrayDataset]:
        """(train pool, server test set) of a pooled data set."""
        return train_test_split(self._load(), test_fraction=self.test_fraction, seed=self.seed)

    def server_test_set(self) -> ArrayDataset:
        """The server's held-out split; with the ``natural`` partitioner, the whole file at ``data_path``."""
        if self.partitioner == "natural":
            if not self.data_path:
                raise DatasetError(
                    "with the 'natural' partitioner the server evaluates on its own held-out file: set data-path "
                    "in the run config to it"
                )
            return self._load()
        return self.split()[1]

    def client_train_set(self, partition_id: int, num_partitions: int, *, node_data_path: str = "") -> ArrayDataset:
        """This client's training data.

        With the ``natural`` partitioner the client's data is its own file (``node_data_path``), used whole: its
        missing values are imputed and its features standardized with that file's own statistics only.
        """
        if self.partitioner == "natural":
            if not node_data_path:
                raise DatasetError(
                    "the 'natural' partitioner needs each node's own data file: set data-path in the node config"
                )
            return self._load(node_data_path)
        if not 0 <= partition_id < num_partitions:
            raise PartitionError(f"partition id {partition_id} is outside 0..{num_partitions - 1}")
        pool, parts = _client_shares(self, num_partitions)
        return pool.subset(parts[partition_id])


@functools.lru_cache(maxsize=4)
def _client_shares(data: FederatedData, num_partitions: int) -> tuple[ArrayDataset, tuple[np.ndarray, ...]]:
    """The training pool and every client's sample indices: a pure function of the (frozen, hashable) description.

    Memoised because one process plays many clients: a simulation worker, or a plain loop over clients, would
    otherwise load, split and partition the whole data set again for every message (at 1,000 MNIST clients that
    cost about as much as the client's training step). The cached arrays are made read-only; callers only ever get
    copies (``subset``).
    """
    pool, _ = data.split()
    parts = partition_indices(
        pool.y,
        num_partitions,
        method=data.partitioner,
        alpha=data.alpha,
        shards_per_partition=data.shards_per_partition,
        seed=data.seed,
    )
    for array in (pool.x, pool.y, *parts):
        array.setflags(write=False)
    return pool, tuple(parts)

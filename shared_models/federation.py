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

from shared_models.data import ArrayDataset, CsvFormat, train_test_split
from shared_models.errors import DatasetError, PartitionError
from shared_models.partition import partition_indices
from shared_models.registry import DataLoaderSpec, resolve_loader
from shared_models.run_config import DEFAULT_RUN_CONFIG, options, setting


@dataclass(frozen=True, kw_only=True)
class FederatedData:
    """A data set, how it is split between the server's test set and the clients, and how clients share it.

    The defaults are the run config's (:data:`~shared_models.run_config.DEFAULT_RUN_CONFIG`), for code that builds
    one by hand; :meth:`from_run_config` takes every field from the run config.
    """

    dataset: str
    data_path: str = DEFAULT_RUN_CONFIG["data-path"]
    label_column: str = DEFAULT_RUN_CONFIG["label-column"]
    partitioner: str = DEFAULT_RUN_CONFIG["partitioner"]
    alpha: float = DEFAULT_RUN_CONFIG["alpha"]
    shards_per_partition: int = DEFAULT_RUN_CONFIG["shards-per-client"]
    test_fraction: float = DEFAULT_RUN_CONFIG["test-fraction"]
    seed: int = DEFAULT_RUN_CONFIG["seed"]
    csv_header: bool = DEFAULT_RUN_CONFIG["csv-header"]
    csv_columns: tuple[str, ...] = ()
    label_binarize_at: float = DEFAULT_RUN_CONFIG["label-binarize-at"]
    num_classes: int = DEFAULT_RUN_CONFIG["num-classes"]
    standardize: bool = DEFAULT_RUN_CONFIG["standardize"]
    data_options: tuple[tuple[str, Any], ...] = ()
    """The run config's ``data-options.NAME`` keys, as sorted (name, value) pairs (hashable: the shares cache)."""
    project_dir: str = DEFAULT_RUN_CONFIG["project-dir"]
    """The user's project directory, put on ``sys.path`` so a loader named by import path imports."""

    def __post_init__(self) -> None:
        if self.partitioner == "dirichlet" and not self.alpha > 0:
            raise PartitionError(f"Dirichlet alpha must be > 0, got {self.alpha}; smaller alpha means stronger skew")

    @classmethod
    def from_run_config(cls, config: Mapping[str, Any]) -> FederatedData:
        """Read the data keys of a Flower run config (``dataset``, ``data-path``, ``partitioner``, ...); a missing
        key is a :class:`~shared_models.run_config.RunConfigError` that names it."""
        return cls(
            dataset=setting(config, "dataset"),
            data_path=setting(config, "data-path"),
            label_column=setting(config, "label-column"),
            partitioner=setting(config, "partitioner"),
            alpha=setting(config, "alpha"),
            shards_per_partition=setting(config, "shards-per-client"),
            test_fraction=setting(config, "test-fraction"),
            seed=setting(config, "seed"),
            csv_header=setting(config, "csv-header"),
            csv_columns=tuple(c.strip() for c in setting(config, "csv-columns").split(",") if c.strip()),
            label_binarize_at=setting(config, "label-binarize-at"),
            num_classes=setting(config, "num-classes"),
            standardize=setting(config, "standardize"),
            data_options=tuple(sorted(options(config, "data-options").items())),
            project_dir=setting(config, "project-dir"),
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

    @property
    def loader(self) -> DataLoaderSpec:
        """The data set's loader, resolved from ``dataset`` (a built-in name or an import path)."""
        return resolve_loader(self.dataset, project_dir=self.project_dir or None)

    @property
    def loader_options(self) -> dict[str, Any]:
        """What the loader is called with: ``data-options.NAME`` keys; for the ``csv`` built-in, first the run
        config's CSV keys (``label-column``, ``csv-header``, ...)."""
        given = dict(self.data_options)
        if self.dataset == "csv":
            fmt = self.csv_format
            return {
                "label_column": fmt.label_column,
                "header": fmt.header,
                "columns": fmt.columns,
                "binarize_at": fmt.binarize_at,
                "num_classes": fmt.num_classes,
                "standardize": fmt.standardize,
                **given,
            }
        return given

    def _load(self, data_path: str | None = None) -> ArrayDataset:
        return self.loader.load(data_path or self.data_path, self.loader_options, num_classes=self.num_classes)

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

"""Partitioners for simulation: IID, Dirichlet(alpha) over labels, shards (pathological).

Each returns one sorted array of sample indices per partition; together they cover every sample exactly once.
The fourth kind, "natural", is one file per node and needs no partitioner: each node loads its own file.

We use our own NumPy implementation rather than flwr-datasets: its partitioners work on Hugging Face
``datasets.Dataset`` objects (pulling in ``datasets``, ``pyarrow`` and ``pandas``), while ours partition plain
label arrays that every client can recompute identically from the seed.
"""

from __future__ import annotations

import numpy as np

from shared_models.errors import PartitionError

PARTITIONERS = ("iid", "dirichlet", "shards")


def _check_count(num_samples: int, num_partitions: int) -> None:
    if num_partitions < 1:
        raise PartitionError(f"number of partitions must be at least 1, got {num_partitions}")
    if num_partitions > num_samples:
        raise PartitionError(f"cannot split {num_samples} samples into {num_partitions} partitions; use fewer clients")


def iid(labels: np.ndarray, num_partitions: int, *, seed: int = 0) -> list[np.ndarray]:
    """Shuffle, then cut into near-equal parts."""
    _check_count(len(labels), num_partitions)
    order = np.random.default_rng(seed).permutation(len(labels))
    return [np.sort(part) for part in np.array_split(order, num_partitions)]


def dirichlet(
    labels: np.ndarray, num_partitions: int, *, alpha: float, seed: int = 0, min_size: int = 2, max_tries: int = 100
) -> list[np.ndarray]:
    """Label skew: for each class, split its samples over partitions in Dirichlet(alpha) proportions.

    Small alpha gives each partition few classes; large alpha approaches IID. Draws again (up to ``max_tries``)
    until every partition holds at least ``min_size`` samples, as in Hsu et al. (2019).
    """
    if not alpha > 0:
        raise PartitionError(f"Dirichlet alpha must be > 0, got {alpha}; smaller alpha means stronger label skew")
    _check_count(len(labels), num_partitions)
    if num_partitions * min_size > len(labels):
        raise PartitionError(
            f"{len(labels)} samples cannot give {num_partitions} partitions at least {min_size} samples each"
        )
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(max_tries):
        parts: list[list[int]] = [[] for _ in range(num_partitions)]
        for cls in classes:
            members = rng.permutation(np.flatnonzero(labels == cls))
            proportions = rng.dirichlet(np.full(num_partitions, alpha))
            cuts = (np.cumsum(proportions)[:-1] * len(members)).astype(int)
            for part, chunk in zip(parts, np.split(members, cuts), strict=True):
                part.extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise PartitionError(
        f"no Dirichlet(alpha={alpha}) split gave every one of {num_partitions} partitions {min_size} samples "
        f"in {max_tries} draws; raise alpha or use fewer clients"
    )


def shards(
    labels: np.ndarray, num_partitions: int, *, shards_per_partition: int = 2, seed: int = 0
) -> list[np.ndarray]:
    """Pathological non-IID (McMahan et al. 2017): sort by label, cut into shards, deal a few shards to each."""
    num_shards = num_partitions * shards_per_partition
    if shards_per_partition < 1:
        raise PartitionError(f"shards per partition must be at least 1, got {shards_per_partition}")
    _check_count(len(labels), num_shards)
    rng = np.random.default_rng(seed)
    by_label = np.argsort(labels, kind="stable")
    shard_list = np.array_split(by_label, num_shards)
    order = rng.permutation(num_shards)
    return [np.sort(np.concatenate([shard_list[s] for s in order[i::num_partitions]])) for i in range(num_partitions)]


def partition_indices(
    labels: np.ndarray,
    num_partitions: int,
    *,
    method: str,
    alpha: float = 0.5,
    shards_per_partition: int = 2,
    seed: int = 0,
) -> list[np.ndarray]:
    """Dispatch by name (``iid``, ``dirichlet``, ``shards``)."""
    labels = np.asarray(labels)
    if method == "iid":
        return iid(labels, num_partitions, seed=seed)
    if method == "dirichlet":
        return dirichlet(labels, num_partitions, alpha=alpha, seed=seed)
    if method == "shards":
        return shards(labels, num_partitions, shards_per_partition=shards_per_partition, seed=seed)
    raise PartitionError(
        f"unknown partitioner {method!r}; choose one of: {', '.join(PARTITIONERS)} "
        "(or 'natural' with one data file per node)"
    )

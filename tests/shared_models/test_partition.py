import numpy as np
import pytest

from shared_models.errors import PartitionError
from shared_models.partition import partition_indices

LABELS = np.repeat(np.arange(10), 100)  # 1,000 samples, 10 balanced classes


def _check_exact_cover(parts, n):
    joined = np.concatenate(parts)
    assert len(joined) == n, "a sample was lost or duplicated"
    assert np.array_equal(np.sort(joined), np.arange(n))


@pytest.mark.parametrize("method", ["iid", "dirichlet", "shards"])
def test_every_sample_lands_in_exactly_one_partition(method):
    parts = partition_indices(LABELS, 10, method=method, alpha=0.3, seed=3)
    assert len(parts) == 10
    _check_exact_cover(parts, len(LABELS))


def test_iid_sizes_are_even():
    sizes = [len(p) for p in partition_indices(LABELS, 7, method="iid")]
    assert max(sizes) - min(sizes) <= 1


def _mean_label_entropy(parts):
    ents = []
    for p in parts:
        counts = np.bincount(LABELS[p], minlength=10) / len(p)
        nz = counts[counts > 0]
        ents.append(-(nz * np.log(nz)).sum())
    return float(np.mean(ents))


def test_dirichlet_skews_labels_and_alpha_controls_it():
    iid = _mean_label_entropy(partition_indices(LABELS, 10, method="iid"))
    mild = _mean_label_entropy(partition_indices(LABELS, 10, method="dirichlet", alpha=100.0))
    strong = _mean_label_entropy(partition_indices(LABELS, 10, method="dirichlet", alpha=0.1))
    assert iid > 2.2  # close to log(10) = 2.30
    assert strong < 1.5 < mild


def test_dirichlet_is_reproducible_from_the_seed():
    a = partition_indices(LABELS, 10, method="dirichlet", alpha=0.5, seed=7)
    b = partition_indices(LABELS, 10, method="dirichlet", alpha=0.5, seed=7)
    c = partition_indices(LABELS, 10, method="dirichlet", alpha=0.5, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_shards_give_each_partition_few_labels():
    parts = partition_indices(LABELS, 10, method="shards", shards_per_partition=2)
    assert all(len(np.unique(LABELS[p])) <= 2 for p in parts)


@pytest.mark.parametrize("alpha", [0.0, -1.0])
def test_alpha_must_be_positive(alpha):
    with pytest.raises(PartitionError, match="alpha must be > 0"):
        partition_indices(LABELS, 10, method="dirichlet", alpha=alpha)


def test_unknown_partitioner_and_too_many_clients():
    with pytest.raises(PartitionError, match="unknown partitioner"):
        partition_indices(LABELS, 10, method="random-ish")
    with pytest.raises(PartitionError, match="fewer clients"):
        partition_indices(LABELS[:5], 10, method="iid")

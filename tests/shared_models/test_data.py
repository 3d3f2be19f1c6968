import gzip
import struct

import numpy as np
import pytest

from shared_models.data import load_csv, load_dataset, load_digits, load_mnist, train_test_split
from shared_models.errors import DatasetError
from shared_models.federation import FederatedData


def test_digits_are_images_scaled_to_unit_range():
    d = load_digits()
    assert d.x.shape == (1797, 1, 8, 8) and d.x.dtype == np.float32
    assert 0.0 <= d.x.min() and d.x.max() <= 1.0
    assert d.num_classes == 10


def test_mnist_reads_real_idx_files(data_dir):
    d = load_mnist(data_dir / "mnist-500")
    assert d.x.shape == (500, 1, 28, 28)
    assert set(np.unique(d.y)) == set(range(10))
    assert d.y[:5].tolist() == [7, 2, 1, 0, 4]  # the well-known first digits of the MNIST test split


def test_mnist_truncated_file_is_a_clear_error(tmp_path):
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 0x803, 10, 28, 28) + bytes(100))
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 0x801, 10) + bytes(10))
    with pytest.raises(DatasetError, match="truncated"):
        load_mnist(tmp_path)


def test_mnist_missing_directory_or_files(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_mnist(tmp_path / "nope")
    with pytest.raises(DatasetError, match="no MNIST IDX files"):
        load_mnist(tmp_path)


def test_real_hospital_csv_without_header(data_dir):
    d = load_csv(data_dir / "processed.cleveland.data", label_column="13", header=False)
    assert d.x.shape == (303, 13)
    assert not np.isnan(d.x).any(), "missing values ('?') must be imputed"
    assert d.num_classes == 5


def test_csv_missing_values_use_this_files_means(tmp_path):
    path = tmp_path / "node.csv"
    path.write_text("age,chol,label\n40,200,0\n60,?,1\n,300,1\n")
    d = load_csv(path)
    assert d.x.tolist() == [[40.0, 200.0], [60.0, 250.0], [50.0, 300.0]]
    assert d.y.tolist() == [0, 1, 1]


def test_csv_without_label_column_names_the_columns(tmp_path):
    path = tmp_path / "node.csv"
    path.write_text("age,chol,diagnosis\n40,200,0\n")
    with pytest.raises(DatasetError, match=r"no label column 'label'.*diagnosis"):
        load_csv(path)


def test_csv_bad_cells_and_missing_file(tmp_path):
    path = tmp_path / "node.csv"
    path.write_text("age,label\nforty,0\n")
    with pytest.raises(DatasetError, match="line 2.*'forty' is not a number"):
        load_csv(path)
    with pytest.raises(DatasetError, match="does not exist"):
        load_csv(tmp_path / "missing.csv")


def test_unknown_dataset_and_missing_path():
    with pytest.raises(DatasetError, match="unknown data set"):
        load_dataset("cifar")
    with pytest.raises(DatasetError, match="needs a data path"):
        load_dataset("mnist")


def test_split_is_reproducible_and_disjoint():
    d = load_digits()
    train, test = train_test_split(d, test_fraction=0.2, seed=0)
    assert len(train) + len(test) == len(d)
    again, _ = train_test_split(d, test_fraction=0.2, seed=0)
    assert np.array_equal(train.y, again.y)


def test_federation_shares_cover_the_train_pool_once():
    fed = FederatedData(dataset="digits", partitioner="dirichlet", alpha=0.5)
    pool, test = fed.split()
    shares = [fed.client_train_set(i, 4) for i in range(4)]
    assert sum(len(s) for s in shares) == len(pool)
    assert len(test) == round(0.2 * 1797)

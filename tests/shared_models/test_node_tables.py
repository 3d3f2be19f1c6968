"""A hospital node's table: the federation's schema, binarized labels, per-node standardization."""

import numpy as np
import pytest

from shared_models.data import CsvFormat, load_csv
from shared_models.errors import DatasetError, SchemaMismatchError
from shared_models.federation import FederatedData
from shared_models.run_config import DEFAULT_RUN_CONFIG

UCI = "age,sex,cp,trestbps,chol,fbs,restecg,thalach,exang,oldpeak,slope,ca,thal,num".split(",")


def test_headerless_table_takes_the_schemas_names_and_binarizes_the_label(data_dir):
    d = load_csv(data_dir / "processed.va.data", header=False, columns=UCI, label_column="num", binarize_at=1)
    assert d.x.shape == (200, 13)
    assert set(np.unique(d.y)) == {0, 1} and d.num_classes == 2
    assert not np.isnan(d.x).any()


def test_rejects_table_with_a_column_missing(tmp_path, data_dir):
    rows = (data_dir / "processed.hungarian.data").read_text().splitlines()
    path = tmp_path / "short.data"
    path.write_text("\n".join(",".join(r.split(",")[:12] + r.split(",")[13:]) for r in rows))
    with pytest.raises(SchemaMismatchError, match="13 columns but the federation's schema has 14"):
        load_csv(path, header=False, columns=UCI, label_column="num")


def test_rejects_header_with_renamed_and_reordered_columns(tmp_path):
    path = tmp_path / "node.csv"
    path.write_text("a,b,label\n1,2,0\n")
    with pytest.raises(SchemaMismatchError, match=r"missing \['c'\], unexpected \['b'\]"):
        load_csv(path, columns=["a", "c", "label"])
    with pytest.raises(SchemaMismatchError, match="same names in another order"):
        load_csv(path, columns=["b", "a", "label"])
    assert load_csv(path, columns=["a", "b", "label"]).x.shape == (1, 2)


def test_standardization_uses_this_files_own_statistics(tmp_path):
    path = tmp_path / "node.csv"
    path.write_text("a,b,const,label\n1,10,5,0\n2,,5,1\n3,30,5,0\n")
    d = load_csv(path, standardize_features=True)
    assert np.allclose(d.x.mean(axis=0), 0, atol=1e-6)
    assert np.allclose(d.x[:, :2].std(axis=0), 1, atol=1e-6)
    assert np.all(d.x[:, 2] == 0), "a constant column becomes 0, not NaN"


def test_label_outside_the_federations_classes(tmp_path):
    path = tmp_path / "node.csv"
    path.write_text("a,label\n1,0\n2,3\n")
    with pytest.raises(DatasetError, match="outside the federation's 2 classes"):
        load_csv(path, num_classes=2)
    assert load_csv(path, num_classes=4).num_classes == 4


def test_run_config_names_the_schema():
    data = FederatedData.from_run_config(
        {
            **DEFAULT_RUN_CONFIG,
            "dataset": "csv",
            "partitioner": "natural",
            "csv-columns": " a, b ,label",
            "csv-header": False,
        }
    )
    assert data.csv_format == CsvFormat(columns=("a", "b", "label"), header=False, standardize=True)

"""fedge's first four data sets as loaders with the contract's signature, ``loader(data_path, **options)``.

They are the registry's entries for ``digits``, ``breast-cancer``, ``mnist`` and ``csv``
(:data:`shared_models.registry.BUILTIN_DATASETS`); the reading itself is in :mod:`shared_models.data`. The run
config's older CSV keys (``label-column``, ``csv-header``, ...) reach :func:`csv` as options.

>>> data = digits("")
>>> data.input_shape, data.num_classes
((1, 8, 8), 10)
"""

from __future__ import annotations

from shared_models.data import ArrayDataset, CsvFormat, load_breast_cancer, load_digits, load_mnist
from shared_models.errors import DatasetError


def digits(data_path: str = "") -> ArrayDataset:
    """scikit-learn's 8x8 digits (bundled; ``data_path`` is not used)."""
    return load_digits()


def breast_cancer(data_path: str = "") -> ArrayDataset:
    """scikit-learn's breast cancer table (bundled; ``data_path`` is not used)."""
    return load_breast_cancer()


def mnist(data_path: str) -> ArrayDataset:
    """MNIST from the directory of IDX files at ``data_path``."""
    if not data_path:
        raise DatasetError("data set 'mnist' needs a data path: the directory holding the IDX files")
    return load_mnist(data_path)


def csv(
    data_path: str,
    *,
    label_column: str = "label",
    header: bool = True,
    columns: tuple[str, ...] = (),
    binarize_at: float = 0.0,
    num_classes: int = 0,
    standardize: bool = True,
    **options: object,
) -> ArrayDataset:
    """A node's CSV table (see :func:`shared_models.data.load_csv`); other options (``encoding``, ``delimiter``,
    ...) go to the table reader as they are."""
    if not data_path:
        raise DatasetError("data set 'csv' needs a data path: the node's CSV file")
    fmt = CsvFormat(
        label_column=label_column,
        header=header,
        columns=tuple(columns),
        binarize_at=binarize_at,
        num_classes=num_classes,
        standardize=standardize,
        **options,  # type: ignore[arg-type]
    )
    return fmt.load(data_path)

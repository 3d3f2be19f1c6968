"""CSV tables: reading the text (encoding, BOM, delimiter) and a node's table of numeric features and a label.

Spreadsheets save CSV files in many ways. Here a UTF-8 BOM is read as UTF-8 (``utf-8-sig``, the default); another
encoding is named with ``data-options.encoding`` (a byte that is not UTF-8 is an error naming the file, the byte's
offset and that option); the delimiter is detected from a sample (``,`` ``;`` tab ``|``) or named with
``data-options.delimiter``; a header row read as data is an error pointing at ``csv-header``. Imports no torch.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "node.csv"
>>> _ = path.write_bytes("\\ufeffage;label\\n61;1\\n47;0\\n".encode("utf-8"))
>>> table = read_table(path)
>>> table.x.tolist(), table.y.tolist(), table.feature_names
([[61.0], [47.0]], [1, 0], ('age',))
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared_models.errors import DatasetError, SchemaMismatchError
from shared_models.loaders.contract import LabelledArrays, data_loader, split_list

MISSING_MARKERS = frozenset({"", "?", "na", "nan", "null", "none"})
SNIFFED_DELIMITERS = ",;\t|"
SNIFF_BYTES = 16_384


def read_text(path: str | Path, *, encoding: str = "utf-8-sig") -> str:
    """The file's text; a byte the encoding cannot read is an error naming the file, the offset and the fix."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"data file {path} does not exist; check the node's data path")
    raw = path.read_bytes()
    try:
        return raw.decode(encoding)
    except LookupError:
        raise DatasetError(
            f"unknown text encoding {encoding!r} for {path}; name one Python knows (utf-8, latin-1, cp1252, ...)"
        ) from None
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DatasetError(
            f"{path}: byte 0x{raw[e.start]:02x} at offset {e.start} (line {line}) is not valid {encoding}; the file "
            "was saved in another encoding. Name it in the run config: data-options.encoding=latin-1 (or the "
            "file's own, e.g. cp1252)"
        ) from None


def sniff_delimiter(text: str) -> str:
    """The delimiter of a CSV text, guessed from its start (``,`` when the sample does not tell)."""
    sample = text[:SNIFF_BYTES]
    try:
        return csv.Sniffer().sniff(sample, delimiters=SNIFFED_DELIMITERS).delimiter
    except csv.Error:
        return ","


def read_rows(path: str | Path, *, encoding: str = "utf-8-sig", delimiter: str = "") -> list[list[str]]:
    """The non-blank rows of a CSV file, cells stripped; ``delimiter`` "" detects it."""
    text = read_text(path, encoding=encoding)
    if delimiter in ("\\t", "tab"):
        delimiter = "\t"
    if len(delimiter) > 1:
        raise DatasetError(f"delimiter {delimiter!r} for {path} must be one character (or 'tab')")
    delimiter = delimiter or sniff_delimiter(text)
    rows = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    return [[cell.strip() for cell in row] for row in rows if any(cell.strip() for cell in row)]


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _looks_like_header(row: Sequence[str]) -> bool:
    """A row of names: no cell is a number, and at least one is not a missing-value marker."""
    return not any(_is_number(c) for c in row) and any(c.lower() not in MISSING_MARKERS for c in row)


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
    hint = ""
    if all(_is_number(c) for c in columns):
        hint = " Its first line looks like data, not names: set csv-header = false in the run config."
    raise SchemaMismatchError(
        f"{path}: its columns do not match the federation's schema ({detail}); expected {list(expected)}. "
        "Rename or reorder the columns of this node's file (or fix csv-columns in the run config)." + hint
    )


def standardize(x: np.ndarray) -> np.ndarray:
    """Each feature to mean 0 and standard deviation 1 with this table's own statistics (constant columns to 0).

    Only the node's own rows are used, so no statistic leaves the node.
    """
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    return ((x - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)


@dataclass(frozen=True)
class Table:
    """A node's table as arrays: float32 features, int64 class ids, and the number of classes they belong to."""

    x: np.ndarray
    y: np.ndarray
    num_classes: int
    feature_names: tuple[str, ...]


def parse_cells(path: Path, rows: list[list[str]], names: list[str], *, first_line: int, header: bool) -> np.ndarray:
    """The cells as float64 (missing values NaN); a cell that is no number is an error naming line and column,
    and a header row read as data points at ``csv-header``."""
    values = np.full((len(rows), len(names)), np.nan, dtype=np.float64)
    for r, row in enumerate(rows):
        line = first_line + r
        if len(row) != len(names):
            what = "the header has" if header else "the first row has"
            raise DatasetError(f"{path}, line {line}: {len(row)} fields but {what} {len(names)}")
        for c, cell in enumerate(row):
            if cell.lower() in MISSING_MARKERS:
                continue
            try:
                values[r, c] = float(cell)
            except ValueError:
                if r == 0 and not header and _looks_like_header(row):
                    raise DatasetError(
                        f"{path}, line {line} looks like a header ({', '.join(repr(n) for n in row[:4])}"
                        f"{', ...' if len(row) > 4 else ''}) but csv-header = false reads it as data; set "
                        "csv-header = true in the run config (or remove that line)"
                    ) from None
                raise DatasetError(
                    f"{path}, line {line}, column {names[c]!r}: {cell!r} is not a number; "
                    "features must be numeric (encode categories as numbers)"
                ) from None
    return values


def read_table(
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
) -> Table:
    """A node's table: one label column, numeric features, missing values allowed.

    Missing values (empty, ``?``, ``NA``, ``nan``) are imputed with the column mean of this file only, so no
    statistics leave the node. Labels must be integers ``0..K-1`` (``K``: ``num_classes``, the federation's count,
    else the largest label seen + 1). Without a header the columns are named by the schema (``columns``) if one is
    given, else by position ``"0"``, ``"1"``, ...

    ``columns`` is the federation's schema (every column, label included, in order): a file that differs is refused
    with :class:`SchemaMismatchError` before any value is parsed. ``binarize_at`` > 0 turns the label into
    ``label >= binarize_at`` (the heart disease files: ``num`` 0-4, disease when >= 1). ``standardize_features``
    scales every feature with this file's own mean and standard deviation.
    """
    path = Path(path)
    rows = read_rows(path, encoding=encoding, delimiter=delimiter)
    if not rows:
        raise DatasetError(f"{path} is empty; a node needs at least one row of data")
    names = list(rows[0]) if header else [str(i) for i in range(len(rows[0]))]
    names = _check_schema(path, names, columns, header)
    body = rows[1:] if header else rows
    if label_column not in names:
        hint = "Name the label column in the config (label-column) or add it to the file"
        if header and all(_is_number(n) for n in names):
            hint = "Its first line looks like data, not names: set csv-header = false (and name the columns with "
            hint += "csv-columns, or label-column by position)"
        raise DatasetError(f"{path} has no label column {label_column!r}; its columns are {names}. {hint}")
    if not body:
        raise DatasetError(f"{path} has a header but no data rows")
    values = parse_cells(path, body, names, first_line=2 if header else 1, header=header)
    label_idx = names.index(label_column)
    labels = values[:, label_idx]
    if np.isnan(labels).any():
        raise DatasetError(f"{path}: {int(np.isnan(labels).sum())} rows have no label in column {label_column!r}")
    if binarize_at > 0:
        labels = (labels >= binarize_at).astype(np.float64)
    if (labels != np.round(labels)).any() or labels.min() < 0:
        raise DatasetError(f"{path}: labels in {label_column!r} must be non-negative integers (class indices)")
    classes = int(labels.max()) + 1
    if num_classes and classes > num_classes:
        line = int(np.argmax(labels >= num_classes)) + (2 if header else 1)
        raise DatasetError(
            f"{path}, line {line}: label {classes - 1} in {label_column!r} is outside the federation's "
            f"{num_classes} classes (0..{num_classes - 1}); check num-classes, or label-binarize-at for a yes/no label"
        )
    features = np.delete(values, label_idx, axis=1)
    means = np.nanmean(np.where(np.isnan(features).all(axis=0), 0.0, features), axis=0)
    features = np.where(np.isnan(features), means, features)
    if standardize_features:
        features = standardize(features)
    num = num_classes or (2 if binarize_at > 0 else classes)
    feature_names = tuple(n for i, n in enumerate(names) if i != label_idx)
    return Table(features.astype(np.float32), labels.astype(np.int64), num, feature_names)


@data_loader
def load_csv_data(
    data_path: str,
    *,
    label_column: str = "label",
    header: bool = True,
    columns: str = "",
    binarize_at: float = 0.0,
    num_classes: int = 0,
    standardize: bool = False,
    encoding: str = "utf-8-sig",
    delimiter: str = "",
) -> LabelledArrays:
    """The ``csv`` loader: a table with one label column and numeric features (see :func:`read_table`).

    Options (``data-options.NAME``): ``label-column``, ``header``, ``columns`` (comma-separated schema),
    ``binarize-at``, ``num-classes``, ``standardize``, ``encoding``, ``delimiter``.
    """
    table = read_table(
        data_path,
        label_column=label_column,
        header=header,
        columns=split_list(columns),
        binarize_at=binarize_at,
        num_classes=num_classes,
        standardize_features=standardize,
        encoding=encoding,
        delimiter=delimiter,
    )
    return LabelledArrays(table.x, table.y)

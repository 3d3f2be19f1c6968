"""Sensor series: sliding windows over a CSV of time steps, and the UCR/UEA archive's ``.ts`` files.

Both return float32 windows shaped (N, channels, steps), the layout of ``torch.nn.Conv1d`` (a recurrent model
transposes to (N, steps, channels) in its ``forward``).

>>> import numpy as np
>>> x, y = sliding_windows(np.arange(10.0)[:, None], np.array([0] * 6 + [1] * 4), window=4, stride=2)
>>> x.shape, y.tolist()
((4, 1, 4), [0, 0, 0, 1])
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shared_models.errors import DatasetError
from shared_models.loaders.contract import LabelledArrays, class_ids, data_loader, integer_labels, split_list
from shared_models.loaders.tables import MISSING_MARKERS, parse_cells, read_rows, read_text

LABEL_RULES = ("majority", "last")


def sliding_windows(
    values: np.ndarray, labels: np.ndarray, *, window: int, stride: int, label: str = "majority"
) -> tuple[np.ndarray, np.ndarray]:
    """Windows of ``window`` steps every ``stride`` steps over ``values`` (steps, channels), and one label per
    window: the most frequent one in it (``majority``; a tie goes to the smaller class id) or its last step's
    (``last``, what a device predicting online sees). ``(steps - window) // stride + 1`` windows; none if shorter."""
    if window <= 0 or stride <= 0:
        raise DatasetError(f"window and stride must be positive numbers of steps, got window={window} stride={stride}")
    if label not in LABEL_RULES:
        raise DatasetError(f"label rule {label!r} is not one of {', '.join(LABEL_RULES)}")
    steps, channels = values.shape
    if steps < window:
        return np.zeros((0, channels, window), np.float32), np.zeros(0, np.int64)
    starts = np.arange(0, steps - window + 1, stride)
    x = np.stack([values[s : s + window].T for s in starts]).astype(np.float32)
    if label == "last":
        y = labels[starts + window - 1]
    else:
        width = int(labels.max()) + 1
        y = np.array([np.bincount(labels[s : s + window], minlength=width).argmax() for s in starts])
    return x, y.astype(np.int64)


def _row_labels(cells: list[str], classes: tuple[str, ...], source: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Labels of a sensor CSV: class ids as they are when every one is a whole number, else names."""
    try:
        numbers = np.array([float(c) for c in cells])
    except ValueError:
        return class_ids(cells, classes=classes, source=source)
    if classes:
        return class_ids(cells, classes=classes, source=source)
    return integer_labels(numbers, source=source), ()


@data_loader
def load_windows(
    data_path: str,
    *,
    window: int = 0,
    stride: int = 0,
    label: str = "majority",
    label_column: str = "label",
    columns: str = "",
    group_column: str = "",
    classes: str = "",
    encoding: str = "utf-8-sig",
    delimiter: str = "",
) -> LabelledArrays:
    """The ``windows`` loader: a CSV with a header, one row per time step. Options: ``window`` (steps per window,
    required), ``stride`` (steps between windows; default ``window``: no overlap), ``label`` (``majority`` or
    ``last``), ``label-column``, ``columns`` (the sensor channels, comma-separated; default every other column),
    ``group-column`` (windows never cross a change of its value: one recording, one device), ``classes`` (the
    federation's class names in id order, for named labels), ``encoding``, ``delimiter``. Missing readings take the
    channel's mean over this file."""
    path = Path(data_path)
    if window <= 0:
        raise DatasetError(f"the windows loader needs data-options.window (steps per window), got {window}")
    rows = read_rows(path, encoding=encoding, delimiter=delimiter)
    if len(rows) < 2:
        raise DatasetError(f"{path} needs a header row and at least one row of readings")
    header, body = rows[0], rows[1:]
    for name, what in ((label_column, "label-column"), (group_column, "group-column")):
        if name and name not in header:
            raise DatasetError(f"{path} has no column {name!r} ({what}); its columns are {header}")
    channels = list(split_list(columns)) or [c for c in header if c not in (label_column, group_column)]
    unknown = [c for c in channels if c not in header]
    if unknown:
        raise DatasetError(f"{path} has no column {unknown[0]!r} (data-options.columns); its columns are {header}")
    for r, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DatasetError(f"{path}, line {r}: {len(row)} fields but the header has {len(header)}")
    picked = [[row[header.index(c)] for c in channels] for row in body]
    values = parse_cells(path, picked, channels, first_line=2, header=True)
    means = np.nanmean(np.where(np.isnan(values).all(axis=0), 0.0, values), axis=0)
    values = np.where(np.isnan(values), means, values)
    label_cells = [row[header.index(label_column)] for row in body]
    empty = [i + 2 for i, c in enumerate(label_cells) if c.lower() in MISSING_MARKERS]
    if empty:
        raise DatasetError(f"{path}, line {empty[0]}: no label in {label_column!r} ({len(empty)} rows without one)")
    labels, names = _row_labels(label_cells, split_list(classes), str(path))
    groups = [row[header.index(group_column)] for row in body] if group_column else [""] * len(body)
    bounds = [0] + [i for i in range(1, len(groups)) if groups[i] != groups[i - 1]] + [len(groups)]
    xs, ys = [], []
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        x, y = sliding_windows(
            values[start:end], labels[start:end], window=window, stride=stride or window, label=label
        )
        xs.append(x)
        ys.append(y)
    x, y = np.concatenate(xs), np.concatenate(ys)
    if not len(x):
        raise DatasetError(f"{path}: no run of readings is {window} steps long; use a smaller data-options.window")
    return LabelledArrays(x, y, names)


def _ts_header(path: Path, lines: list[str]) -> tuple[dict[str, str], int]:
    tags: dict[str, str] = {}
    for number, line in enumerate(lines):
        if not line or line.startswith("#"):
            continue
        if not line.startswith("@"):
            raise DatasetError(f"{path}, line {number + 1}: data before @data; is this a .ts file?")
        tag, _, value = line[1:].partition(" ")
        if tag.lower() == "data":
            return tags, number + 1
        tags[tag.lower()] = value.strip()
    raise DatasetError(f"{path} has no @data line; a .ts file lists its header tags, then @data, then the cases")


def read_ts(
    path: str | Path, *, length: int = 0, encoding: str = "utf-8-sig"
) -> tuple[np.ndarray, list[str], tuple[str, ...]]:
    """A UCR/UEA ``.ts`` file: (cases (N, dimensions, steps) float32, each case's label, the ``@classLabel`` names).

    Missing values (``?``) take the mean of their case's dimension. Cases of unequal length need ``length``: longer
    ones are cut, shorter ones padded with their last value.
    """
    path = Path(path)
    lines = [line.strip() for line in read_text(path, encoding=encoding).splitlines()]
    tags, first = _ts_header(path, lines)
    if tags.get("timestamps", "false").lower() == "true":
        raise DatasetError(f"{path} uses @timeStamps true, which this reader does not take; export it without them")
    class_tag = tags.get("classlabel", "false").split()
    if not class_tag or class_tag[0].lower() != "true":
        raise DatasetError(f"{path} has no @classLabel true ...; fedge trains classifiers and needs the labels")
    names = tuple(class_tag[1:])
    cases: list[list[np.ndarray]] = []
    labels: list[str] = []
    for number, line in enumerate(lines[first:], start=first + 1):
        if not line or line.startswith("#"):
            continue
        *dims, label = line.split(":")
        if not dims:
            raise DatasetError(f"{path}, line {number}: a case needs its values, ':' and its label")
        try:
            series = [
                np.array([np.nan if v.strip() == "?" else float(v) for v in d.split(",")], np.float64) for d in dims
            ]
        except ValueError as e:
            raise DatasetError(f"{path}, line {number}: {e}; values must be numbers or ? for missing") from None
        if cases and len(series) != len(cases[0]):
            raise DatasetError(f"{path}, line {number}: {len(series)} dimensions, the first case has {len(cases[0])}")
        cases.append(series)
        labels.append(label.strip())
    if not cases:
        raise DatasetError(f"{path} has no cases after @data")
    lengths = {len(s) for case in cases for s in case}
    if length <= 0 and len(lengths) > 1:
        raise DatasetError(
            f"{path}: cases have {min(lengths)} to {max(lengths)} steps; set data-options.length to cut or pad "
            "them to one length"
        )
    steps = length if length > 0 else lengths.pop()
    x = np.empty((len(cases), len(cases[0]), steps), np.float32)
    for i, case in enumerate(cases):
        for d, s in enumerate(case):
            s = np.where(np.isnan(s), np.nanmean(s) if not np.isnan(s).all() else 0.0, s)
            s = s[:steps] if len(s) >= steps else np.concatenate([s, np.full(steps - len(s), s[-1])])
            x[i, d] = s
    return x, labels, names


@data_loader
def load_ts(
    data_path: str,
    *,
    window: int = 0,
    stride: int = 0,
    length: int = 0,
    classes: str = "",
    encoding: str = "utf-8-sig",
) -> LabelledArrays:
    """The ``ts`` loader: a UCR/UEA ``.ts`` file, one sample per case, or with ``window`` > 0, windows of that many
    steps every ``stride`` steps within each case (each window takes its case's label). Options: ``window``,
    ``stride`` (default ``window``), ``length`` (cut/pad cases of unequal length), ``classes`` (the class names in
    id order; default the file's ``@classLabel`` list), ``encoding``."""
    path = Path(data_path)
    cases, labels, declared = read_ts(path, length=length, encoding=encoding)
    y, names = class_ids(labels, classes=split_list(classes) or declared, source=str(path))
    if window <= 0:
        return LabelledArrays(cases, y, names)
    if window > cases.shape[2]:
        raise DatasetError(f"{path}: data-options.window={window} is longer than its cases ({cases.shape[2]} steps)")
    xs = [
        sliding_windows(case.T, np.full(case.shape[1], label), window=window, stride=stride or window)[0]
        for case, label in zip(cases, y, strict=True)
    ]
    per_case = len(xs[0])
    return LabelledArrays(np.concatenate(xs), np.repeat(y, per_case), names)

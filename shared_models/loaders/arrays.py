"""NumPy ``.npz`` archives: one array of samples and one of labels (keys ``x`` and ``y`` unless named)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from shared_models.errors import DatasetError
from shared_models.loaders.contract import LabelledArrays, class_ids, data_loader, integer_labels, split_list


@data_loader
def load_npz(data_path: str, *, x_key: str = "x", y_key: str = "y", classes: str = "") -> LabelledArrays:
    """The ``npz`` loader. Options: ``x-key`` and ``y-key`` (the arrays' names in the archive), ``classes`` (the
    federation's class names in id order, for labels stored as strings). Integer labels are class ids as they are.
    Pickled (object) arrays are refused: an archive from elsewhere must not run code here."""
    path = Path(data_path)
    if not path.is_file():
        raise DatasetError(f"npz file {path} does not exist; check the node's data path")
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.files)
            missing = [k for k in (x_key, y_key) if k not in keys]
            if missing:
                raise DatasetError(
                    f"{path} has no array {missing[0]!r}; it holds {keys}. Name the arrays with data-options.x-key "
                    "and data-options.y-key"
                )
            x, y = archive[x_key], archive[y_key]
    except ValueError as e:
        raise DatasetError(f"{path}: {e}; save the arrays without pickling (plain numeric or string arrays)") from e
    except (OSError, zipfile.BadZipFile) as e:
        raise DatasetError(f"cannot read {path} as a NumPy .npz archive: {e}") from e
    if x.ndim < 2:
        raise DatasetError(f"{path}: {x_key!r} has shape {x.shape}; samples go along the first axis, (N, features...)")
    if y.ndim != 1:
        raise DatasetError(f"{path}: {y_key!r} has shape {y.shape}; labels must be one class per sample, shape (N,)")
    if len(x) != len(y):
        raise DatasetError(f"{path}: {x_key!r} holds {len(x)} samples but {y_key!r} {len(y)} labels")
    if not np.issubdtype(x.dtype, np.number):
        raise DatasetError(f"{path}: {x_key!r} is of type {x.dtype}; samples must be numbers")
    if y.dtype.kind in "US":
        ids, names = class_ids(y.astype(str), classes=split_list(classes), source=str(path))
        return LabelledArrays(x.astype(np.float32), ids, names)
    return LabelledArrays(x.astype(np.float32), integer_labels(y, source=f"{path}: {y_key!r}"))

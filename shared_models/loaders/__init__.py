"""Built-in data loaders: each has the loader contract's signature, ``load_data(data_path, **options) -> (x, y)``,
so a run config names them like a user's own (``dataset = "shared_models.loaders:load_image_folder"``, or the
short name the registry's table, :data:`shared_models.registry.BUILTIN_DATASETS`, maps to that path) and passes
their options as ``data-options.NAME`` keys.

===================  ===========================================  =================================================
short name           import path                                  what it reads
===================  ===========================================  =================================================
(see below)          ``shared_models.loaders:load_csv_data``      a table: numeric features, one label column
``image-folder``     ``shared_models.loaders:load_image_folder``  one subfolder of images per class (Pillow)
``npz``              ``shared_models.loaders:load_npz``           a NumPy archive with ``x`` and ``y`` arrays
``windows``          ``shared_models.loaders:load_windows``       sliding windows over a sensor CSV (one row a step)
``ts``               ``shared_models.loaders:load_ts``            a UCR/UEA ``.ts`` time-series file
===================  ===========================================  =================================================

The registry's ``csv`` reads the same tables (through :mod:`shared_models.builtin_data`, with the run config's
``label-column``, ``csv-header``, ... keys); ``load_csv_data`` is that reader with the contract's signature, all
its settings as ``data-options``.

They return :class:`~shared_models.loaders.contract.LabelledArrays` (a plain ``(x, y)`` pair that also records the
class names in id order) and raise :class:`~shared_models.errors.DatasetError` with what to change. None of them
imports torch.
"""

from shared_models.loaders.arrays import load_npz
from shared_models.loaders.contract import LabelledArrays, class_ids, data_loader
from shared_models.loaders.images import load_image_folder
from shared_models.loaders.series import load_ts, load_windows, read_ts, sliding_windows
from shared_models.loaders.tables import load_csv_data, read_table

__all__ = [
    "LabelledArrays",
    "class_ids",
    "data_loader",
    "load_csv_data",
    "load_image_folder",
    "load_npz",
    "load_ts",
    "load_windows",
    "read_table",
    "read_ts",
    "sliding_windows",
]

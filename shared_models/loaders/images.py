"""A folder of images with one subfolder per class (``data/cat/1.png``, ``data/dog/7.jpg``), read with Pillow.

Classes are numbered in the sorted order of the subfolders' names, or in the order ``data-options.classes`` gives:
pin that list when a node may lack a class, so that ``dog`` is class 1 on every node. The list used is recorded on
the result (``.classes``). Images are returned as float32 in [0, 1], shaped (N, channels, height, width).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shared_models.errors import DatasetError
from shared_models.loaders.contract import LabelledArrays, class_ids, data_loader, split_list

IMAGE_SUFFIXES = "png,jpg,jpeg,bmp,gif,webp,tif,tiff"


def parse_size(size: int | str) -> tuple[int, int] | None:
    """``size`` as (width, height): ``32`` or ``"32"`` is square, ``"64x48"`` is width x height; 0/"" keeps it."""
    if size in (0, "", None):
        return None
    try:
        if isinstance(size, str) and "x" in size.lower():
            width, height = (int(v) for v in size.lower().split("x"))
        else:
            width = height = int(size)
    except ValueError:
        raise DatasetError(
            f"image size {size!r} is not a size; give 32 (square) or WIDTHxHEIGHT such as 64x48"
        ) from None
    if width <= 0 or height <= 0:
        raise DatasetError(f"image size {size!r} must be positive")
    return width, height


def _pillow():
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as e:  # pragma: no cover - Pillow comes with matplotlib in the train extra
        raise DatasetError("reading image folders needs Pillow: pip install 'fedge[train]' (or pillow)") from e
    return Image, UnidentifiedImageError


@data_loader
def load_image_folder(
    data_path: str, *, size: int | str = 0, channels: int = 3, classes: str = "", suffixes: str = IMAGE_SUFFIXES
) -> LabelledArrays:
    """The ``image-folder`` loader. Options: ``size`` (resize to 32 or WIDTHxHEIGHT; without it every image must
    have the same size), ``channels`` (1 = grayscale, 3 = RGB), ``classes`` (the federation's class names in id
    order, comma-separated; default: the sorted subfolder names), ``suffixes`` (which files are images)."""
    Image, UnidentifiedImageError = _pillow()
    root = Path(data_path)
    if not root.is_dir():
        raise DatasetError(
            f"image folder {root} does not exist; data-path must be a folder with one subfolder per class"
        )
    if channels not in (1, 3):
        raise DatasetError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    mode = "L" if channels == 1 else "RGB"
    target = parse_size(size)
    wanted = {f".{s.lower().lstrip('.')}" for s in split_list(suffixes)}
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DatasetError(
            f"{root} has no subfolders; put each class's images in a subfolder named after it ({root}/cat/1.png)"
        )
    files = [
        (folder.name, f)
        for folder in folders
        for f in sorted(folder.rglob("*"))
        if f.is_file() and f.suffix.lower() in wanted and not f.name.startswith(".")
    ]
    if not files:
        raise DatasetError(f"no images ({', '.join(sorted(wanted))}) in the subfolders of {root}")
    y, names = class_ids([label for label, _ in files], classes=split_list(classes), source=str(root))
    images = []
    first_size: tuple[int, int] | None = None
    for _, file in files:
        try:
            with Image.open(file) as image:
                image = image.convert(mode)
                if target is not None and image.size != target:
                    image = image.resize(target, Image.Resampling.BILINEAR)
                array = np.asarray(image, dtype=np.float32) / 255.0
        except (UnidentifiedImageError, OSError) as e:
            raise DatasetError(f"cannot read image {file}: {e}; remove it or replace it with a valid image") from e
        if first_size is None:
            first_size = array.shape[:2]
        elif array.shape[:2] != first_size:
            raise DatasetError(
                f"{file} is {array.shape[1]}x{array.shape[0]} but {files[0][1]} is {first_size[1]}x{first_size[0]}; "
                "images of one data set need one size: set data-options.size (e.g. 32 or 64x48) to resize them"
            )
        images.append(array[None] if channels == 1 else array.transpose(2, 0, 1))
    return LabelledArrays(np.ascontiguousarray(np.stack(images)), y, names)

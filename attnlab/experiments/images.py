"""Small image classification sets as tensors: scikit-learn's bundled 8×8 digits (no download, so the vision
experiments run anywhere), image folders (``root/class_name/*.png``) and Hugging Face ``datasets`` image
sets, all as (N, C, H, W) float32 in [0, 1] with int64 labels and class names.

``ImageData.first_per_class`` takes the first n training images of each class, the subsets behind
data-efficiency curves (accuracy against the number of training samples).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class ImageData:
    """Images (N, C, H, W) float32 in [0, 1], labels (N,) int64 indexing ``class_names``."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: Sequence[int] | np.ndarray | torch.Tensor) -> ImageData:
        index = torch.as_tensor(np.asarray(index), dtype=torch.long)
        return ImageData(self.images[index], self.labels[index], self.class_names)

    def first_per_class(self, n: int) -> ImageData:
        """The first ``n`` images of each class, in their order here (all of a class that has fewer)."""
        return self.subset(first_per_class(self.labels.numpy(), n))


def first_per_class(labels: np.ndarray, n: int) -> np.ndarray:
    """Indices of the first ``n`` occurrences of each label, in ascending order."""
    if n < 0:
        raise ConfigError(f"n per class must be >= 0, got {n}")
    labels = np.asarray(labels)
    rank = np.zeros(len(labels), dtype=np.int64)
    for value in np.unique(labels):
        where = np.flatnonzero(labels == value)
        rank[where] = np.arange(len(where))
    return np.flatnonzero(rank < n)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices holding each class in the same proportion (``round(count · test_fraction)`` of
    a class to the test side), each side in a seeded random order."""
    if not 0 < test_fraction < 1:
        raise ConfigError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    train, test = [], []
    for value in np.unique(labels):
        where = rng.permutation(np.flatnonzero(labels == value))
        k = round(len(where) * test_fraction)
        test.append(where[:k])
        train.append(where[k:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


# --- digits -----------------------------------------------------------------------------------------------


def load_digits(*, test_fraction: float = 0.2, seed: int = 0) -> tuple[ImageData, ImageData]:
    """scikit-learn's 1,797 handwritten digits (8×8, one channel, values 0–16 scaled to [0, 1]), split
    into stratified train and test sets."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError:
        raise DataError("the digits images ship with scikit-learn, which is not installed: "
                        "pip install scikit-learn") from None
    bunch = sklearn_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    data = ImageData(images, labels, [str(d) for d in range(10)])
    train, test = stratified_split(bunch.target, test_fraction, seed)
    return data.subset(train), data.subset(test)


# --- image folders and Hugging Face datasets --------------------------------------------------------------


def _pixels(image: Any, channels: int, size: tuple[int, int] | None) -> np.ndarray:
    """One image (PIL or array) as (C, H, W) uint8, converted to ``channels`` and resized to ``size`` (H, W)."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image))
    image = image.convert({1: "L", 3: "RGB"}[channels])
    if size is not None and image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def _stack(arrays: list[np.ndarray], names: Iterable[str]) -> torch.Tensor:
    """(N, C, H, W) float32 in [0, 1]; images of different sizes are an error that names the first odd one."""
    if not arrays:
        raise DataError("no images found")
    for array, name in zip(arrays, names):
        if array.shape != arrays[0].shape:
            raise DataError(f"{name} is {array.shape[1]}×{array.shape[2]}, the first image "
                            f"{arrays[0].shape[1]}×{arrays[0].shape[2]}: pass size=(H, W) to resize them all")
    return torch.from_numpy(np.stack(arrays)).float().div_(255.0)


def _check_options(channels: int, size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if channels not in (1, 3):
        raise ConfigError(f"channels must be 1 or 3, got {channels}")
    return (size, size) if isinstance(size, int) else size


def load_image_folder(
    root: str | Path, *, size: int | tuple[int, int] | None = None, channels: int = 3
) -> ImageData:
    """Every ``root/<class_name>/*.png|jpg|jpeg``: classes are the sub-folders sorted by name, files sorted
    by name within a class."""
    hw = _check_options(channels, size)
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder of class folders")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    files, labels = [], []
    for label, name in enumerate(classes):
        found = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        files += found
        labels += [label] * len(found)
    if not files:
        raise DataError(f"no .png or .jpg images in the class folders of {root}")
    from PIL import Image

    arrays = []
    for path in files:
        with Image.open(path) as image:
            arrays.append(_pixels(image, channels, hw))
    return ImageData(_stack(arrays, map(str, files)), torch.tensor(labels, dtype=torch.long), classes)


def _open_hf(source: str | Path, split: str) -> Any:
    """A ``datasets.Dataset``: a ``save_to_disk`` folder (one split of it if it holds several) or a hub name."""
    import datasets

    try:
        if Path(source).is_dir():
            ds = datasets.load_from_disk(str(source))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise DataError(f"{source} has splits {', '.join(ds)}, not {split!r}")
                ds = ds[split]
            return ds
        return datasets.load_dataset(str(source), split=split)
    except DataError:
        raise
    except Exception as exc:  # the hub and the file readers raise many kinds; the user needs one line
        raise DataError(f"cannot load the image dataset {source}: {exc}") from exc


def _hf_labels(ds: Any, column: str) -> tuple[list[int], list[str]]:
    """Label indices and class names: a ClassLabel column's own names, otherwise the sorted distinct values."""
    values = list(ds[column])
    names = getattr(ds.features[column], "names", None)
    if names is not None:
        return [int(v) for v in values], list(names)
    classes = sorted(set(values))
    index = {v: i for i, v in enumerate(classes)}
    return [index[v] for v in values], [str(c) for c in classes]


def load_hf_images(
    source: str | Path,
    *,
    split: str = "train",
    image_column: str = "image",
    label_column: str = "label",
    size: int | tuple[int, int] | None = None,
    channels: int = 3,
) -> ImageData:
    """A Hugging Face image classification set: a local ``load_from_disk`` folder, or a hub name read with
    ``load_dataset`` (which needs network access the first time)."""
    hw = _check_options(channels, size)
    ds = _open_hf(source, split)
    missing = [c for c in (image_column, label_column) if c not in ds.column_names]
    if missing:
        raise DataError(f"{source} has columns {', '.join(ds.column_names)}, not {', '.join(missing)}")
    labels, names = _hf_labels(ds, label_column)
    arrays = [_pixels(row[image_column], channels, hw) for row in ds]
    return ImageData(_stack(arrays, (f"{source}[{i}]" for i in range(len(arrays)))),
                     torch.tensor(labels, dtype=torch.long), names)

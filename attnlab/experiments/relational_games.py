"""Relational games (Shanahan et al. 2020), generated offline: small images that ask a yes/no question about
how the objects in a 3×3 grid relate, the visual benchmark of the Dual Attention Transformer paper.

An image is 36×36×3 ``uint8``, black, divided into a 3×3 grid of 12×12 cells. An object is a 3×3 boolean
mask drawn as 3×3-pixel blocks (9×9 pixels at offset (1, 1) inside its cell) in one colour of ``PALETTE``.
Two objects are *identical* only when both their mask and their colour match. Shapes come in three sets:

- ``pentominoes`` (training): the 49 edge-connected 5-cell subsets of the 3×3 mask;
- ``hexominoes`` (out of distribution): the 48 edge-connected 6-cell subsets;
- ``stripes`` (out of distribution): the 11 masks made of whole straight lines that are neither of the
  above: the 3 rows, the 3 columns, the 2 diagonals, the two outer rows together, the two outer columns
  together, and both diagonals together (an X).

The sets share no mask (different cell counts or connectivity). Tasks and their rules are in ``TASKS``;
every sample is a pure function of the seed, labels are balanced exactly, and ``make_splits`` keeps every
held-out image out of the training set by hashing the pixels.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

from ..errors import ConfigError

IMAGE_SIZE = 36
GRID = 3
CELL = 12
BLOCK = 3  # pixels per mask cell
OFFSET = 1  # where the 9×9 object starts inside its 12×12 cell

# Saturated colours far apart in RGB, so no two are confused after rescaling or compression.
PALETTE: np.ndarray = np.array(
    [
        (255, 0, 0),  # red
        (0, 255, 0),  # green
        (0, 0, 255),  # blue
        (255, 255, 0),  # yellow
        (255, 0, 255),  # magenta
        (0, 255, 255),  # cyan
        (255, 128, 0),  # orange
        (128, 0, 255),  # violet
    ],
    dtype=np.uint8,
)

TASKS: dict[str, str] = {
    "same": "two objects in random cells: are they identical?",
    "between": "three objects filling one row or column: are the two outer ones identical?",
    "occurs": "one object in the top row, three in the bottom row: does the top one appear below?",
    "xoccurs": "as occurs: does the top object appear exactly once in the bottom row?",
    "match_pattern": "top and bottom rows each follow ABC, ABA, ABB or AAB with their own objects: "
    "do both rows follow the same pattern?",
}
SHAPE_SETS = ("pentominoes", "hexominoes", "stripes")
OOD_SHAPE_SETS = ("hexominoes", "stripes")
# Row patterns of match_pattern, as letter indices: ABC, ABA, ABB, AAB.
PATTERNS: np.ndarray = np.array([(0, 1, 2), (0, 1, 0), (0, 1, 1), (0, 0, 1)])
NEAR_MISS_P = 0.5  # share of "different" objects that differ from a given one in colour only or shape only

EMPTY = -1


# --- shapes -----------------------------------------------------------------------------------------------


def _is_edge_connected(cells: tuple[tuple[int, int], ...]) -> bool:
    """Whether the cells form one piece through shared edges (not corners)."""
    todo, seen = [cells[0]], {cells[0]}
    members = set(cells)
    while todo:
        r, c = todo.pop()
        for nb in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
            if nb in members and nb not in seen:
                seen.add(nb)
                todo.append(nb)
    return len(seen) == len(cells)


def _connected_masks(n_cells: int) -> np.ndarray:
    """All edge-connected ``n_cells``-subsets of the 3×3 mask, in a fixed order."""
    grid = [(r, c) for r in range(GRID) for c in range(GRID)]
    masks = []
    for cells in itertools.combinations(grid, n_cells):
        if _is_edge_connected(cells):
            mask = np.zeros((GRID, GRID), dtype=bool)
            mask[tuple(np.array(cells).T)] = True
            masks.append(mask)
    return np.stack(masks)


def _stripe_masks() -> np.ndarray:
    """The whole-line masks of the stripes set (see the module docstring)."""
    rows = [np.zeros((3, 3), dtype=bool) for _ in range(3)]
    for i, m in enumerate(rows):
        m[i, :] = True
    cols = [m.T.copy() for m in rows]
    diag, anti = np.eye(3, dtype=bool), np.fliplr(np.eye(3, dtype=bool))
    masks = [*rows, *cols, diag, anti, rows[0] | rows[2], cols[0] | cols[2], diag | anti]
    return np.stack(masks)


@cache
def shape_set(name: str) -> np.ndarray:
    """The (S, 3, 3) boolean masks of a shape set; read-only, so the cached array cannot be changed."""
    if name == "pentominoes":
        masks = _connected_masks(5)
    elif name == "hexominoes":
        masks = _connected_masks(6)
    elif name == "stripes":
        masks = _stripe_masks()
    else:
        raise ConfigError(f"unknown shape set {name!r}; choose one of {', '.join(SHAPE_SETS)}")
    masks.setflags(write=False)
    return masks


# --- sampling objects -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Objects:
    """A batch of objects, one per sample: shape index and colour index."""

    shape: np.ndarray
    colour: np.ndarray

    def where(self, take: np.ndarray, other: _Objects) -> _Objects:
        """``other`` where ``take`` is true, else self."""
        return _Objects(np.where(take, other.shape, self.shape), np.where(take, other.colour, self.colour))

    def equals(self, other: _Objects) -> np.ndarray:
        return (self.shape == other.shape) & (self.colour == other.colour)


@dataclass(frozen=True)
class _Palette:
    """How many shapes and colours objects are drawn from."""

    n_shapes: int
    n_colours: int

    def random(self, rng: np.random.Generator, n: int) -> _Objects:
        return _Objects(rng.integers(self.n_shapes, size=n), rng.integers(self.n_colours, size=n))

    def near_miss(self, rng: np.random.Generator, obj: _Objects) -> _Objects:
        """An object that differs from ``obj`` in colour only, shape only, or both (a third each), so a
        model cannot decide identity from one attribute."""
        n = len(obj.shape)
        kind = rng.integers(3, size=n)
        new_shape = (obj.shape + rng.integers(1, self.n_shapes, size=n)) % self.n_shapes
        new_colour = (obj.colour + rng.integers(1, self.n_colours, size=n)) % self.n_colours
        shape = np.where(kind == 0, obj.shape, new_shape)
        colour = np.where(kind == 1, obj.colour, new_colour)
        return _Objects(shape, colour)

    def distinct(self, rng: np.random.Generator, avoid: list[_Objects]) -> _Objects:
        """Per sample, an object identical to none of ``avoid``; half the time a near miss of one of them."""
        n = len(avoid[0].shape)
        out = self.random(rng, n)
        todo = np.ones(n, dtype=bool)
        while todo.any():
            idx = np.flatnonzero(todo)
            pick = rng.integers(len(avoid), size=len(idx))
            base = _Objects(
                np.stack([a.shape[idx] for a in avoid])[pick, np.arange(len(idx))],
                np.stack([a.colour[idx] for a in avoid])[pick, np.arange(len(idx))],
            )
            near = rng.random(len(idx)) < NEAR_MISS_P
            cand = self.random(rng, len(idx)).where(near, self.near_miss(rng, base))
            out.shape[idx], out.colour[idx] = cand.shape, cand.colour
            clash = np.zeros(n, dtype=bool)
            for a in avoid:
                clash |= out.equals(a)
            todo = clash
        return out


def _balanced_labels(rng: np.random.Generator, n: int) -> np.ndarray:
    """Exactly n//2 positives (one more, by chance, when n is odd), in random order."""
    labels = np.zeros(n, dtype=np.int64)
    labels[: n // 2 + (n % 2) * int(rng.integers(2))] = 1
    return rng.permutation(labels)


# --- scenes: (n, 9) shape and colour indices per cell, EMPTY where a cell is empty -----------------------


class _Scene:
    """The cells of n images being filled in."""

    def __init__(self, n: int):
        self.shape = np.full((n, GRID * GRID), EMPTY, dtype=np.int64)
        self.colour = np.full((n, GRID * GRID), EMPTY, dtype=np.int64)

    def put(self, cells: np.ndarray, obj: _Objects) -> None:
        """Put obj[i] into cell cells[i] (row-major index) of image i."""
        rows = np.arange(len(cells))
        self.shape[rows, cells] = obj.shape
        self.colour[rows, cells] = obj.colour


def _scene_same(rng: np.random.Generator, labels: np.ndarray, pal: _Palette) -> _Scene:
    n = len(labels)
    cells = np.argsort(rng.random((n, GRID * GRID)), axis=1)[:, :2]
    a = pal.random(rng, n)
    b = pal.near_miss(rng, a).where(labels == 1, a)
    scene = _Scene(n)
    scene.put(cells[:, 0], a)
    scene.put(cells[:, 1], b)
    return scene


def _line_cells(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 3) cells of a random row or column, in order along it."""
    index = np.arange(GRID)
    lines = np.array([r * GRID + index for r in range(GRID)] + [index * GRID + c for c in range(GRID)])
    return lines[rng.integers(len(lines), size=n)]


def _scene_between(rng: np.random.Generator, labels: np.ndarray, pal: _Palette) -> _Scene:
    """Outer objects identical (positive) or a near miss; in a third of the negatives the middle object
    copies one outer object, so "some pair is identical" does not solve the task."""
    n = len(labels)
    cells = _line_cells(rng, n)
    first = pal.random(rng, n)
    last = pal.near_miss(rng, first).where(labels == 1, first)
    middle = pal.distinct(rng, [first, last])
    copy = (labels == 0) & (rng.random(n) < 1 / 3)
    middle = middle.where(copy, first.where(rng.random(n) < 0.5, last))
    scene = _Scene(n)
    for k, obj in enumerate((first, middle, last)):
        scene.put(cells[:, k], obj)
    return scene


def _bottom_row(rng: np.random.Generator, top: _Objects, copies: np.ndarray, pal: _Palette) -> list[_Objects]:
    """The three bottom objects: ``copies[i]`` of them (at random places) identical to top[i], the others
    not identical to it (half of them near misses)."""
    rank = np.argsort(rng.random((len(copies), GRID)), axis=1)  # a random permutation of the columns
    is_copy = rank < copies[:, None]
    return [pal.distinct(rng, [top]).where(is_copy[:, k], top) for k in range(GRID)]


def _occurs_scene(rng: np.random.Generator, copies: np.ndarray, pal: _Palette) -> _Scene:
    """A top-row object at a random column, the middle row empty, the bottom row full."""
    n = len(copies)
    top = pal.random(rng, n)
    scene = _Scene(n)
    scene.put(rng.integers(GRID, size=n), top)
    for k, obj in enumerate(_bottom_row(rng, top, copies, pal)):
        scene.put(np.full(n, 2 * GRID + k), obj)
    return scene


def _scene_occurs(rng: np.random.Generator, labels: np.ndarray, pal: _Palette) -> _Scene:
    """Positives hold one copy (two thirds) or two; negatives none."""
    copies = np.where(labels == 1, 1 + (rng.random(len(labels)) < 1 / 3), 0)
    return _occurs_scene(rng, copies, pal)


def _scene_xoccurs(rng: np.random.Generator, labels: np.ndarray, pal: _Palette) -> _Scene:
    """Positives hold exactly one copy; negatives none or two (half each), so occurs does not solve it."""
    copies = np.where(labels == 1, 1, 2 * (rng.random(len(labels)) < 0.5))
    return _occurs_scene(rng, copies, pal)


def _scene_match_pattern(rng: np.random.Generator, labels: np.ndarray, pal: _Palette) -> _Scene:
    """Six mutually different objects (A, B, C for the top row, three fresh ones for the bottom row)."""
    n = len(labels)
    top_pattern = rng.integers(len(PATTERNS), size=n)
    other = (top_pattern + rng.integers(1, len(PATTERNS), size=n)) % len(PATTERNS)
    bottom_pattern = np.where(labels == 1, top_pattern, other)
    letters = [pal.random(rng, n)]
    for _ in range(5):
        letters.append(pal.distinct(rng, letters))
    scene = _Scene(n)
    for row, pattern, first in ((0, top_pattern, 0), (2, bottom_pattern, 3)):
        for k in range(GRID):
            letter = PATTERNS[pattern, k] + first
            obj = _Objects(
                np.stack([x.shape for x in letters])[letter, np.arange(n)],
                np.stack([x.colour for x in letters])[letter, np.arange(n)],
            )
            scene.put(np.full(n, row * GRID + k), obj)
    return scene


_SCENES = {
    "same": _scene_same,
    "between": _scene_between,
    "occurs": _scene_occurs,
    "xoccurs": _scene_xoccurs,
    "match_pattern": _scene_match_pattern,
}


# --- rendering and decoding -------------------------------------------------------------------------------


def render(shape_idx: np.ndarray, colour_idx: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(n, 36, 36, 3) uint8 images of scenes given as (n, 9) shape and colour indices (EMPTY: no object)."""
    n = len(shape_idx)
    present = shape_idx != EMPTY
    cell_masks = masks[np.where(present, shape_idx, 0)] & present[:, :, None, None]  # (n, 9, 3, 3)
    pixels = cell_masks.repeat(BLOCK, axis=2).repeat(BLOCK, axis=3)  # (n, 9, 9, 9)
    cells = np.zeros((n, GRID * GRID, CELL, CELL), dtype=bool)
    span = slice(OFFSET, OFFSET + GRID * BLOCK)
    cells[:, :, span, span] = pixels
    colours = PALETTE[np.where(present, colour_idx, 0)]  # (n, 9, 3)
    image = cells[..., None] * colours[:, :, None, None, :]  # (n, 9, 12, 12, 3)
    image = image.reshape(n, GRID, GRID, CELL, CELL, 3).transpose(0, 1, 3, 2, 4, 5)
    return np.ascontiguousarray(image.reshape(n, IMAGE_SIZE, IMAGE_SIZE, 3).astype(np.uint8))


@dataclass(frozen=True)
class DecodedObject:
    """An object read back from an image: its 3×3 mask (rows of booleans) and RGB colour."""

    mask: tuple[tuple[bool, ...], ...]
    colour: tuple[int, int, int]

    @property
    def n_cells(self) -> int:
        return sum(map(sum, self.mask))


def decode(image: np.ndarray) -> list[list[DecodedObject | None]]:
    """The 3×3 grid of objects drawn in one image (None for an empty cell), read from the pixels alone.

    Raises ValueError when the image was not drawn by ``render`` (a block of mixed colours, or a pixel
    outside the 9×9 object area), so a check built on decoding cannot pass by accident.
    """
    image = np.asarray(image)
    if image.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise ValueError(f"expected a (36, 36, 3) image, got {image.shape}")
    return [[_decode_cell(image[r * CELL:(r + 1) * CELL, c * CELL:(c + 1) * CELL]) for c in range(GRID)]
            for r in range(GRID)]


def _decode_cell(cell: np.ndarray) -> DecodedObject | None:
    span = slice(OFFSET, OFFSET + GRID * BLOCK)
    outside = cell.copy()
    outside[span, span] = 0
    if outside.any():
        raise ValueError("pixels outside the object area of a cell")
    blocks = cell[span, span].reshape(GRID, BLOCK, GRID, BLOCK, 3).transpose(0, 2, 1, 3, 4)
    blocks = blocks.reshape(GRID, GRID, BLOCK * BLOCK, 3)
    if (blocks != blocks[:, :, :1]).any():
        raise ValueError("a 3×3 block of mixed colours")
    colours = blocks[:, :, 0]  # (3, 3, 3)
    mask = colours.any(axis=-1)
    if not mask.any():
        return None
    drawn = {tuple(int(v) for v in colours[r, c]) for r, c in zip(*np.nonzero(mask))}
    if len(drawn) != 1:
        raise ValueError("an object of more than one colour")
    return DecodedObject(tuple(tuple(bool(v) for v in row) for row in mask), drawn.pop())


# --- public generation ------------------------------------------------------------------------------------


def _check(task: str, shapes: str) -> None:
    if task not in TASKS:
        raise ConfigError(f"unknown relational task {task!r}; choose one of {', '.join(TASKS)}")
    if shapes not in SHAPE_SETS:
        raise ConfigError(f"unknown shape set {shapes!r}; choose one of {', '.join(SHAPE_SETS)}")


def _generate(task: str, n: int, shapes: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    masks = shape_set(shapes)
    labels = _balanced_labels(rng, n)
    scene = _SCENES[task](rng, labels, _Palette(len(masks), len(PALETTE)))
    return render(scene.shape, scene.colour, masks), labels


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *stream]))


def generate(task: str, n: int, *, shapes: str = "pentominoes", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images of one task: (n, 36, 36, 3) uint8 and (n,) int64 labels (1: the relation holds),
    exactly balanced; the same arguments always give the same arrays."""
    _check(task, shapes)
    if n < 0:
        raise ConfigError(f"n must be >= 0, got {n}")
    return _generate(task, n, shapes, _rng(seed, list(TASKS).index(task), SHAPE_SETS.index(shapes)))


def image_hashes(images: np.ndarray) -> list[bytes]:
    """A digest of each image's pixels, to tell identical images apart from different ones."""
    return [hashlib.blake2b(img.tobytes(), digest_size=16).digest() for img in np.ascontiguousarray(images)]


def _generate_unseen(
    task: str, n: int, shapes: str, rng: np.random.Generator, seen: set[bytes]
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` balanced images, none of whose pixels occur in ``seen`` nor twice among themselves."""
    quota = {1: n // 2, 0: n - n // 2}
    kept: dict[int, list[np.ndarray]] = {0: [], 1: []}
    seen = set(seen)
    for _ in range(1000):
        if all(len(kept[y]) >= quota[y] for y in quota):
            break
        images, labels = _generate(task, max(2 * n, 64), shapes, rng)
        for img, y, h in zip(images, labels, image_hashes(images)):
            if h not in seen and len(kept[int(y)]) < quota[int(y)]:
                seen.add(h)
                kept[int(y)].append(img)
    else:
        raise ConfigError(f"cannot find {n} {task} images of {shapes} that differ from the training images")
    images = np.stack(kept[1] + kept[0]) if n else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    labels = np.array([1] * quota[1] + [0] * quota[0], dtype=np.int64)
    order = rng.permutation(n)
    return images[order], labels[order]


def make_splits(
    task: str, n_train: int, n_test: int, *, seed: int = 0, ood: tuple[str, ...] = OOD_SHAPE_SETS
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Training images (pentominoes) and held-out sets: ``test`` (pentominoes) and ``test_<set>`` for each
    out-of-distribution shape set in ``ood``. No held-out image is pixel-identical to a training image or to
    another held-out image of its set; each set is exactly balanced."""
    _check(task, "pentominoes")
    for name in ood:
        _check(task, name)
    t = list(TASKS).index(task)
    train = _generate(task, n_train, "pentominoes", _rng(seed, t, 0))
    seen = set(image_hashes(train[0]))
    splits = {"train": train, "test": _generate_unseen(task, n_test, "pentominoes", _rng(seed, t, 1), seen)}
    for name in ood:
        rng = _rng(seed, t, 2 + SHAPE_SETS.index(name))
        splits[f"test_{name}"] = _generate_unseen(task, n_test, name, rng, seen)
    return splits


def as_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 3, 36, 36) float32 in [0, 1] and (n,) int64, the layout image models take."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    return x.contiguous(), torch.from_numpy(np.asarray(labels, dtype=np.int64))

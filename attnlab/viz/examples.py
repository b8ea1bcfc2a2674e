"""Built-in sample images for the viz app's image models, so a model can be looked at without an upload.

Which set a model gets depends on what it takes: 8×8 one-channel models get scikit-learn's handwritten digits
(bundled in its wheel: no download), 36×36 RGB models relational-games images (generated offline by
``attnlab.experiments.relational_games``). Any other model needs an uploaded image.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np


@dataclass(frozen=True)
class Example:
    """One sample image: (H, W) or (H, W, 3) uint8 pixels and what it shows."""

    caption: str
    pixels: np.ndarray

    def png(self) -> str:
        """The image as a base64 PNG (what the page shows as a thumbnail)."""
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(self.pixels).save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode("ascii")


@dataclass(frozen=True)
class ExampleSet:
    """Sample images for models of one image size and channel count."""

    name: str
    sides: tuple[int, int]
    channels: int
    load: Callable[[], list[Example]]


def _digits() -> list[Example]:
    """The first image of each digit 0–9 (values 0–16 scaled to 0–255)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    firsts = [int(np.flatnonzero(bunch.target == d)[0]) for d in range(10)]
    return [Example(f"digit {bunch.target[i]}", np.rint(bunch.images[i] * 255 / 16).astype(np.uint8)) for i in firsts]


def _relational_games() -> list[Example]:
    """Two images (the relation holds, it does not) of each of three relational-games tasks."""
    from ..experiments.relational_games import generate

    examples = []
    for task in ("same", "between", "occurs"):
        images, labels = generate(task, 8, seed=0)
        for wanted in (1, 0):
            i = int(np.flatnonzero(labels == wanted)[0])
            examples.append(Example(f"{task}: {'yes' if wanted else 'no'}", images[i]))
    return examples


EXAMPLE_SETS = (
    ExampleSet("scikit-learn digits", (8, 8), 1, _digits),
    ExampleSet("relational games", (36, 36), 3, _relational_games),
)


def example_set(config) -> ExampleSet | None:
    """The sample images that fit a vision config (its image size and channels), or None."""
    for candidate in EXAMPLE_SETS:
        if tuple(config.image_sides) == candidate.sides and config.num_channels == candidate.channels:
            return candidate
    return None


@cache
def examples(name: str) -> tuple[Example, ...]:
    """The images of one set, made once per process; none when the set cannot be made (scikit-learn missing)."""
    for candidate in EXAMPLE_SETS:
        if candidate.name == name:
            try:
                return tuple(candidate.load())
            except ImportError:
                return ()
    raise KeyError(name)

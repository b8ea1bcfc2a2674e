"""``vision-digits``: ViT against ViDAT on scikit-learn's 8×8 handwritten digits, accuracy vs training images.

The DAT paper's vision claim is that relational heads help a Vision Transformer (ImageNet, CIFAR). Those sets
do not fit a laptop, so this experiment asks the same question on the 1,797 digits that ship with
scikit-learn: 8×8 gray images cut into 2×2 patches (16 tokens + CLS), a ViT (only self-attention heads)
against a ViDAT (half the heads relational, positional symbols, symmetric relations), trained on the first
n/10 training images of each class and tested on a held-out fifth of the digits (stratified, its own split
per seed). At laptop scale the two have the same number of parameters up to 0.1 %: the ViT's FFN is widened
by the few units the relational heads' extra projections and symbols cost. At paper scale the models are the
paper's CIFAR-10 shapes, where ViDAT (grouped key/value heads) has 16 % fewer parameters than the ViT, as in
the paper. ``configs.json`` records the counts.

The claim "ViDAT beats ViT" is scored per seed by the mean test accuracy over the grid of training-set sizes
(and, separately, at the smallest size), judged by the Welch interval over seeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError
from . import images as image_sets
from .base import Claim, Experiment, Progress, RunResult, RunSpec
from .training import (
    TrainSettings,
    device_of,
    parameter_count,
    set_seed,
    steps_for_epochs,
    train_image_classifier,
)

_DIGITS = dict(image_size=8, patch_size=2, num_channels=1, num_labels=10, pooling="mean", ffn="gelu")
_VIDAT = dict(symbol_retrieval="positional", symmetric_rels=True, out_proj="per_kind")

# Model and budget per scale. ``arms`` maps an arm to its config overrides (on no preset).
SCALES: dict[str, dict[str, Any]] = {
    # The shapes of the paper's CIFAR-10 models (presets cifar-vit / cifar-vidat: 8 layers, d_model 384, dff 384,
    # 12 heads vs 6 + 6 with 3 key/value heads per kind) on 8×8 digits, trained with the CIFAR recipe of the
    # authors' vision_cifar10/train.py: batch 128, AdamW lr 1e-3 (betas 0.9/0.999, weight decay 5e-5), 5 warmup
    # epochs then cosine to 1e-5, 100 epochs.
    "paper": dict(
        arms={"ViT": dict(_DIGITS, d_model=384, n_layers=8, d_ff=384, n_heads_sa=12, n_heads_ra=0),
              "ViDAT": dict(_DIGITS | _VIDAT, d_model=384, n_layers=8, d_ff=384, n_heads_sa=6, n_heads_ra=6,
                            n_kv_heads=3, symbol_retrieval="position_relative")},
        sizes=[50, 100, 250, 500, 1000, 1390], epochs=100, warmup_epochs=5, min_steps=1, batch_size=128, lr=1e-3,
        min_lr_ratio=1e-2, weight_decay=5e-5),
    # 2 layers, d_model 64, 4 heads (ViT) vs 2 + 2 (ViDAT, dff 128); the ViT's dff 133 equalises parameters.
    "laptop": dict(
        arms={"ViT": dict(_DIGITS, d_model=64, n_layers=2, d_ff=133, n_heads_sa=4, n_heads_ra=0, dropout=0.1),
              "ViDAT": dict(_DIGITS | _VIDAT, d_model=64, n_layers=2, d_ff=128, n_heads_sa=2, n_heads_ra=2,
                            dropout=0.1)},
        sizes=[50, 100, 250, 500, 1000], epochs=100, warmup_epochs=5, min_steps=300, batch_size=32, lr=2e-3,
        min_lr_ratio=1e-2, weight_decay=5e-5),
    "smoke": dict(
        arms={"ViT": dict(_DIGITS, d_model=16, n_layers=1, d_ff=32, n_heads_sa=2, n_heads_ra=0),
              "ViDAT": dict(_DIGITS | _VIDAT, d_model=16, n_layers=1, d_ff=32, n_heads_sa=1, n_heads_ra=1)},
        sizes=[20], epochs=1, warmup_epochs=0, min_steps=2, batch_size=8, lr=1e-3, min_lr_ratio=0.1,
        weight_decay=0.0),
}


class VisionDigits(Experiment):
    name = "vision-digits"
    description = ("8×8 handwritten digits (scikit-learn): test accuracy against the number of training images, "
                   "ViT (self-attention heads only) vs ViDAT (half the heads relational) with the same number of "
                   "parameters.")
    metrics = {"accuracy": True, "train_loss": False}
    scales = ("laptop", "paper", "smoke")
    settings = SCALES
    x_param = "size"
    x_label = "training images"

    @staticmethod
    def _sizes(s: dict[str, Any], sizes: list[int] | None) -> list[int]:
        sizes = [int(n) for n in sizes] if sizes else list(s["sizes"])
        bad = [n for n in sizes if n % 10 or n < 10]
        if bad:
            raise ConfigError(f"vision-digits sizes are images over 10 classes, so multiples of 10; got {bad}")
        return sizes

    def plan(self, scale: str, seeds: int, sizes: list[int] | None = None) -> list[RunSpec]:
        s = self.scale_settings(scale)
        return [RunSpec(arm, seed, {"size": size}) for size in self._sizes(s, sizes)
                for seed in range(seeds) for arm in s["arms"]]

    def claims(self, scale: str, sizes: list[int] | None = None) -> list[Claim]:
        grid = self._sizes(self.scale_settings(scale), sizes)
        source = ("paper: ViDAT beats ViT at matched size (ImageNet top-1 after the last epoch: ViDAT 0.617 vs "
                  "ViT 0.597); no digits experiment in the paper")
        claims = [Claim(text=f"ViDAT beats ViT (mean test accuracy over {len(grid)} training-set sizes)",
                        better="ViDAT", worse="ViT", metric="accuracy", higher_is_better=True, where={},
                        source=source)]
        if len(grid) > 1:
            claims.append(Claim(text=f"ViDAT beats ViT with the fewest training images ({min(grid)})",
                                better="ViDAT", worse="ViT", metric="accuracy", higher_is_better=True,
                                where={"size": min(grid)}, source=source))
        return claims

    def _settings(self, s: dict[str, Any], n: int) -> TrainSettings:
        steps = steps_for_epochs(s["epochs"], n, s["batch_size"], s["min_steps"])
        warmup = min(steps // 5, steps_for_epochs(s["warmup_epochs"], n, s["batch_size"], 0))
        return TrainSettings(steps=steps, batch_size=s["batch_size"], lr=s["lr"], weight_decay=s["weight_decay"],
                             warmup_steps=warmup, schedule="cosine", min_lr_ratio=s["min_lr_ratio"])

    def configs(self, scale: str) -> dict[str, Any]:
        import torch

        import attnlab

        s = self.scale_settings(scale)
        arms = {}
        for arm, overrides in s["arms"].items():
            with torch.device("meta"):
                model = attnlab.create_model("dat-vision", None, **overrides)
            arms[arm] = {"kind": "dat-vision", "overrides": overrides, "parameters": parameter_count(model)}
        return {"arms": arms, "sizes": s["sizes"],
                "training": {k: s[k] for k in ("epochs", "warmup_epochs", "min_steps", "batch_size", "lr",
                                               "min_lr_ratio", "weight_decay")}
                | {"optimizer": "AdamW (decay on matrices only), warmup then cosine",
                   "steps": "max(min_steps, ceil(epochs · size / min(batch_size, size)))"},
                "data": "images.load_digits(test_fraction=0.2, seed=seed); training subset first_per_class(size/10)"}

    def run(self, spec: RunSpec, scale: str, out_dir: Path, progress: Progress) -> RunResult:
        import attnlab

        s = self.scale_settings(scale)
        train_set, test_set = image_sets.load_digits(test_fraction=0.2, seed=spec.seed)
        subset = train_set.first_per_class(int(spec.params["size"]) // 10)
        set_seed(spec.seed)
        model = attnlab.create_model("dat-vision", None, **s["arms"][spec.arm]).to(device_of(self.device))
        final = train_image_classifier(model, subset.images, subset.labels, self._settings(s, len(subset)),
                                       seed=spec.seed, tests={"test": (test_set.images, test_set.labels)},
                                       progress=progress)
        return RunResult(final=final)


VISION_DIGITS = VisionDigits()

"""Configuration of the vision Dual Attention Transformer (ViDAT): a ViT whose encoder layers are dual attention."""

from __future__ import annotations

from ...errors import ConfigError
from ...layers.ffn import FFNS
from ...options import Help
from .configuration_dat import DATConfig

POOLINGS = ("cls", "mean")


class DATVisionConfig(DATConfig):
    """An image of ``image_size`` (a side, or [height, width]) and ``num_channels`` channels cut into ``patch_size``
    patches, a learned CLS token in front, learned positions, ``n_layers`` non-causal dual-attention layers, then
    the CLS token's state or the mean of all (``pooling``) to ``num_labels`` classes. ``n_heads_ra=0`` is the ViT
    baseline. ``block_size`` is derived (patches + 1); ``vocab_size`` is unused.
    """

    model_type = "attnlab_dat_vision"
    ffn_kinds = FFNS + ("relu",)
    position_kinds = ("learned", "none")
    keyword_options = ("num_labels",)  # HF's: sets id2label / label2id
    option_help = {
        "image_size": "image side in pixels, or [height, width]; each divisible by patch_size",
        "patch_size": "side of the square patches",
        "num_channels": "image channels (1 or 3)",
        "pooling": "`cls` (the CLS token's final state) or `mean` (the mean over all tokens, CLS included, as the "
                   "authors)",
        "norm_first": "pre-norm blocks (false: post-norm, x = norm(x + sublayer(x)))",
        "final_norm": "a norm after the pre-norm encoder, before pooling (the authors' vision models have none)",
        "block_size": Help("derived: the number of patches + 1 (the CLS token)", "patches + 1"),
        "pos": "positions: `learned` (one embedding per token, the ViT's) or `none`",
        "ffn": "`gelu`, `swiglu` or `relu`",
        "d_ff": Help("FFN width", "4·d_model (GELU, ReLU), 8/3·d_model (SwiGLU)"),
        "tie_word_embeddings": "unused: an image classifier has no word embeddings",
    }

    image_size: int | list[int] = 32
    patch_size: int = 4
    num_channels: int = 3
    pooling: str = "cls"
    norm_first: bool = True
    final_norm: bool = True
    block_size: int | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        if self.d_ff is None and self.ffn == "relu":
            self.d_ff = 4 * self.d_model
        self._check_sides()  # before anything derives from the patch grid
        tokens = self.num_patches + 1
        if self.block_size is None:
            self.block_size = tokens
        elif self.block_size != tokens:
            raise ConfigError(f"block_size is derived for images: {tokens} tokens ({self.num_patches} patches + CLS); "
                              f"got block_size={self.block_size}")
        super().__post_init__(**kwargs)

    @property
    def image_sides(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        size = self.image_size
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    @property
    def grid(self) -> tuple[int, int]:
        """Patches per column and per row."""
        height, width = self.image_sides
        return height // self.patch_size, width // self.patch_size

    @property
    def num_patches(self) -> int:
        rows, columns = self.grid
        return rows * columns

    def _check_sides(self) -> None:
        sides = self.image_size if isinstance(self.image_size, (list, tuple)) else [self.image_size]
        if not (isinstance(self.patch_size, int) and self.patch_size > 0 and len(sides) in (1, 2)
                and all(isinstance(s, int) and s > 0 and s % self.patch_size == 0 for s in sides)):
            raise ConfigError(f"image_size must be a side or [height, width] of positive multiples of patch_size "
                              f"({self.patch_size!r}), got {self.image_size!r}")

    def check(self) -> None:
        self._check_sides()
        if self.num_channels not in (1, 3):
            raise ConfigError(f"num_channels must be 1 or 3, got {self.num_channels!r}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        super().check()


# Relational games (paper appendix; the authors' experiments/relational_games scripts): 36×36 RGB images in 12×12
# patches (9 tokens + CLS), 2 layers, d_model 128, dff 256, SwiGLU, dropout 0.1, mean pooling, pre-LN, no biases;
# DAT with positional symbols and symmetric relations; binary labels. Every DAT preset here and in the seq2seq
# presets has an output projection per head kind (out_proj="per_kind"), the layout of the authors' package.
_RELGAMES = dict(
    image_size=36, patch_size=12, num_channels=3, num_labels=2, d_model=128, n_layers=2, d_ff=256, ffn="swiglu",
    dropout=0.1, pooling="mean", bias=False, symbol_retrieval="positional", symmetric_rels=True, out_proj="per_kind",
)
# CIFAR (paper appendix; experiments/vision_cifar10): 32×32 RGB in 4×4 patches (64 + CLS), 8 layers, d_model 384,
# dff 384 (the script's default), GELU, mean pooling; ViT 12 heads vs ViDAT 6 + 6 with grouped key/value heads.
# The key/value head count (3 per kind) and the symbols (position-relative, symmetric, as for ImageNet) are not
# given by the source: ours.
_CIFAR = dict(
    image_size=32, patch_size=4, num_channels=3, num_labels=10, d_model=384, n_layers=8, d_ff=384, ffn="gelu",
    pooling="mean", symbol_retrieval="position_relative", symmetric_rels=True, out_proj="per_kind",
)
# ImageNet (paper appendix; experiments/vision_imagenet): 224×224 RGB in 16×16 patches (196 + CLS), 24 layers,
# d_model 1024 (ViT-Large; dff 4096 and GELU as ViT-Large), CLS pooling; ViT 16 heads vs ViDAT 10 + 6 with
# position-relative symbols and symmetric relations.
_IMAGENET = dict(
    image_size=224, patch_size=16, num_channels=3, num_labels=1000, d_model=1024, n_layers=24, d_ff=4096,
    ffn="gelu", pooling="cls", symbol_retrieval="position_relative", symmetric_rels=True, out_proj="per_kind",
)
PRESETS: dict[str, dict] = {
    "debug": dict(image_size=16, patch_size=4, num_channels=3, num_labels=3, d_model=32, n_layers=2, n_heads_sa=2,
                  n_heads_ra=2, symbol_heads=2, n_symbols=16, pooling="cls"),
    "relgames-transformer": dict(_RELGAMES, n_heads_sa=2, n_heads_ra=0),
    "relgames-dat": dict(_RELGAMES, n_heads_sa=1, n_heads_ra=1),
    "relgames-dat-ra": dict(_RELGAMES, n_heads_sa=0, n_heads_ra=2),
    "cifar-vit": dict(_CIFAR, n_heads_sa=12, n_heads_ra=0),
    "cifar-vidat": dict(_CIFAR, n_heads_sa=6, n_heads_ra=6, n_kv_heads=3),
    "imagenet-vit": dict(_IMAGENET, n_heads_sa=16, n_heads_ra=0),
    "imagenet-vidat": dict(_IMAGENET, n_heads_sa=10, n_heads_ra=6),
}

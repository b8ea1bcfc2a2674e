"""Vision DAT (ViDAT): the Auto classes and the image processor, patches, pooling, the ViT baseline, the paper's
presets on the meta device and HF's ``Trainer``."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification, Trainer, TrainingArguments

import attnlab
from attnlab.errors import ConfigError
from attnlab.models.dat import DATForImageClassification, DATImageProcessor


def make(**overrides):
    torch.manual_seed(0)
    return attnlab.create_model("dat-vision", "debug", **overrides).eval()


def test_auto_classes_and_image_processor_round_trip(tmp_path):
    config = attnlab.build_config("dat-vision", "debug")
    model = AutoModelForImageClassification.from_config(config).eval()
    assert isinstance(model, DATForImageClassification)
    processor = DATImageProcessor.for_config(config)
    images = [Image.fromarray(np.random.randint(0, 255, (20, 30, 3), dtype=np.uint8)),
              np.random.randint(0, 255, (40, 40, 3), dtype=np.uint8)]
    pixel_values = processor(images, return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (2, 3, 16, 16) and -1 <= pixel_values.min() and pixel_values.max() <= 1
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded_processor = AutoImageProcessor.from_pretrained(tmp_path)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert isinstance(loaded_processor, DATImageProcessor) and type(loaded) is DATForImageClassification
    again = loaded_processor(images, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(loaded(again).logits, model(pixel_values).logits, rtol=0, atol=0)


def test_any_patch_grid_and_one_channel():
    model = make(image_size=[8, 20], num_channels=1, pooling="mean")
    assert model.config.block_size == 2 * 5 + 1
    processor = DATImageProcessor.for_config(model.config)
    gray = Image.fromarray(np.random.randint(0, 255, (30, 30), dtype=np.uint8))
    pixel_values = processor([gray, gray], return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (2, 1, 8, 20)
    assert model(pixel_values).logits.shape == (2, 3)
    with pytest.raises(ValueError, match="8×20 images"):
        model(torch.randn(1, 1, 8, 16))
    with pytest.raises(ConfigError, match="multiples of patch_size"):
        attnlab.build_config("dat-vision", "debug", image_size=18)


def test_patches_are_raster_order_and_every_token_sees_every_patch():
    model = make(symbol_retrieval="position_relative", n_heads_sa=0, n_heads_ra=4)
    image = torch.randn(1, 3, 16, 16)
    patches = model.embeddings.patches.patch_norm
    seen = []
    handle = patches.register_forward_hook(lambda module, args, output: seen.append(args[0]))
    base = model(image).logits
    handle.remove()
    torch.testing.assert_close(seen[0][0, 1], image[0, :, 0:4, 4:8].permute(1, 2, 0).flatten())
    changed = image.clone()
    changed[..., 12:, 12:] = torch.randn(3, 4, 4)  # the last patch: CLS (pooling="cls") sees it, nothing is causal
    assert not torch.allclose(model(changed).logits, base)
    assert model.symbol_retriever.table.shape[0] == 2 * model.config.max_rel_pos + 1


def test_no_relational_heads_is_the_vit_baseline():
    names = {name for name, _ in make(n_heads_ra=0, n_heads_sa=4).named_parameters()}
    assert not any("relational" in n or "symbol_retriever" in n for n in names)
    assert {"embeddings.cls_token", "encoder.layers.0.mixer.qkv.weight", "encoder.norm.weight",
            "classifier.weight"} <= names
    assert names < {name for name, _ in make().named_parameters()} | names


@pytest.mark.parametrize("preset, heads", [
    ("relgames-transformer", (2, 0)), ("relgames-dat", (1, 1)), ("relgames-dat-ra", (0, 2)),
    ("cifar-vit", (12, 0)), ("cifar-vidat", (6, 6)), ("imagenet-vit", (16, 0)), ("imagenet-vidat", (10, 6)),
])
def test_paper_presets_build_on_the_meta_device(preset, heads):
    config = attnlab.build_config("dat-vision", preset)
    assert (config.n_heads_sa, config.n_heads_ra) == heads
    report = attnlab.info(model="dat-vision", preset=preset)
    assert report["family"] == "dat-vision" and report["parameters"] > 0
    if preset.startswith("relgames"):
        assert (config.block_size, config.pooling, config.ffn) == (10, "mean", "swiglu")


class Stripes(torch.utils.data.Dataset):
    """Horizontal vs vertical stripes: learnable in a few steps."""

    def __init__(self, n: int = 64):
        g = torch.Generator().manual_seed(0)
        self.labels = torch.randint(0, 2, (n,), generator=g)
        stripes = (torch.arange(16) // 2 % 2).float()
        self.images = torch.stack([
            (stripes[:, None] if label else stripes[None, :]).expand(16, 16).expand(3, 16, 16)
            + 0.3 * torch.randn(3, 16, 16, generator=g) for label in self.labels
        ])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"pixel_values": self.images[i], "labels": self.labels[i]}


def test_trainer_reduces_the_loss(tmp_path):
    model = attnlab.create_model("dat-vision", "debug", num_labels=2, pooling="mean")
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=30, per_device_train_batch_size=16, learning_rate=3e-3,
        lr_scheduler_type="constant", warmup_steps=0, logging_steps=5, save_strategy="no", report_to=[],
        use_cpu=True, disable_tqdm=True, seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=Stripes())
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) >= 5 and losses[-1] < 0.7 * losses[0], losses

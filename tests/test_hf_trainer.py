"""Hugging Face ``Trainer`` trains every family through the standard ``labels`` interface."""

import pytest
import torch
from transformers import Trainer, TrainingArguments

import attnlab


class RepeatingPatterns(torch.utils.data.Dataset):
    """Sequences that repeat a short random motif: learnable in a few steps."""

    def __init__(self, n: int = 64, length: int = 32, vocab: int = 256):
        g = torch.Generator().manual_seed(0)
        motifs = torch.randint(0, vocab, (n, 4), generator=g)
        self.items = motifs.repeat(1, length // 4)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return {"input_ids": self.items[i], "labels": self.items[i]}


@pytest.mark.parametrize("family", attnlab.list_models())
def test_hf_trainer_reduces_the_loss(family, tmp_path):
    model = attnlab.create_model(family, "debug")
    data = RepeatingPatterns()
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=30,
        per_device_train_batch_size=16,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        warmup_steps=0,
        logging_steps=5,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) >= 5
    assert losses[-1] < 0.7 * losses[0], losses

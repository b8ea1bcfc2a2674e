"""LoRA on every family through PEFT's own API: train, save, reload, merge, generate."""

import copy

import pytest
import torch

import attnlab
from attnlab.models.registry import FAMILIES

peft = pytest.importorskip("peft")
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # PEFT's, not ours


def lm_batch(config, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, config.vocab_size, (2, 24), generator=generator)


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def train_adapter(model, steps: int = 4) -> None:
    """A few AdamW steps on the adapter parameters only (PEFT has frozen the rest)."""
    g = torch.Generator().manual_seed(1)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        ids = lm_batch(model.config, g)
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_lora_trains_saves_reloads_and_merges(family, tmp_path):
    torch.manual_seed(0)
    base = attnlab.create_model(family, "debug").eval()
    original = copy.deepcopy(base.state_dict())
    ids = lm_batch(base.config, torch.Generator().manual_seed(2))
    before = logits(base, ids)

    model = peft.get_peft_model(base, peft.LoraConfig(target_modules="all-linear"))
    targeted = {name.split(".lora_A")[0] for name, _ in model.named_parameters() if ".lora_A." in name}
    assert targeted and not any(name.endswith("lm_head") for name in targeted)  # the (tied) head is left alone
    assert torch.equal(logits(model, ids), before)  # LoRA starts as the identity (B = 0)

    train_adapter(model)
    adapted = logits(model, ids)
    assert (adapted - before).abs().max() > 1e-3  # the adapter changed the outputs

    # unmerged, the base weights are untouched: PEFT's base_layer holds them unchanged
    base_state = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
                  for k, v in model.state_dict().items() if "lora_" not in k}
    assert all(torch.equal(base_state[k], original[k]) for k in original)

    model.save_pretrained(tmp_path / "adapter")
    torch.manual_seed(123)  # a fresh base: other random weights until the original ones are loaded
    fresh = attnlab.create_model(family, "debug")
    fresh.load_state_dict(original)
    reloaded = peft.PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
    torch.testing.assert_close(logits(reloaded, ids), adapted, rtol=0, atol=1e-6)

    prompt = ids[:1, :6]
    generated = reloaded.generate(input_ids=prompt, max_new_tokens=8, do_sample=False)  # the family's own cache
    merged = reloaded.merge_and_unload()
    assert type(merged) is type(base)
    torch.testing.assert_close(logits(merged, ids), adapted, rtol=0, atol=1e-5)
    assert torch.equal(merged.generate(input_ids=prompt, max_new_tokens=8, do_sample=False), generated)

"""--dtype auto: bf16 autocast only where the device computes bf16 natively and the family is tested under it;
and the test behind BF16_FAMILIES: every family in it trains under bf16 autocast as it does in fp32."""

import pytest
import torch

import attnlab
from attnlab import precision
from attnlab.errors import ConfigError
from attnlab.models import list_models
from attnlab.precision import BF16_FAMILIES, dtype_name, resolve_dtype


@pytest.fixture
def cpu_with(monkeypatch):
    def set_native(native: bool) -> None:
        monkeypatch.setattr(precision, "cpu_bf16", lambda: (native, "avx512_bf16" if native else "no avx512_bf16"))
    return set_native


def test_auto_picks_bf16_on_a_cpu_with_native_bf16_for_a_tested_family(cpu_with):
    cpu_with(True)
    dtype, reason = resolve_dtype("auto", "gpt", "cpu")
    assert dtype == torch.bfloat16 and dtype_name(dtype) == "bfloat16"
    assert "avx512_bf16" in reason and "gpt is tested stable" in reason


def test_auto_keeps_fp32_without_native_bf16_or_for_an_untested_family(cpu_with):
    cpu_with(False)
    dtype, reason = resolve_dtype("auto", "gpt", torch.device("cpu"))
    assert dtype is None and dtype_name(dtype) == "float32" and reason.startswith("fp32: CPU: no avx512_bf16")
    cpu_with(True)
    dtype, reason = resolve_dtype("auto", "myfamily", "cpu")
    assert dtype is None and "'myfamily' is not tested under bf16" in reason


def test_explicit_requests_are_taken_as_asked(cpu_with):
    cpu_with(False)
    assert resolve_dtype("float32", "gpt", "cpu") == (None, "fp32: asked for")
    dtype, reason = resolve_dtype("bfloat16", "gpt", "cpu")
    assert dtype == torch.bfloat16 and "emulated" in reason
    cpu_with(True)
    assert resolve_dtype("bfloat16", "gpt", "cpu") == (torch.bfloat16, "bf16 autocast: asked for")


def test_cuda_follows_is_bf16_supported(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_dtype("auto", "lsw", "cuda")[0] == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    dtype, reason = resolve_dtype("auto", "lsw", "cuda:0")
    assert dtype is None and "before Ampere" in reason


def test_bad_requests_and_other_devices():
    with pytest.raises(ConfigError, match="dtype must be one of"):
        resolve_dtype("fp16", "gpt", "cpu")
    assert resolve_dtype("auto", "gpt", "mps")[0] is None


def test_cpu_detection_agrees_with_the_kernel_flags():
    native, why = precision.cpu_bf16()
    flags = precision._cpuinfo_flags()
    if flags:  # Linux: torch's probe and /proc/cpuinfo tell the same story
        assert native == bool({"avx512_bf16", "amx_bf16"} & flags), why


def test_every_bf16_family_exists():
    assert BF16_FAMILIES <= set(list_models())


def _train(family: str, bf16: bool, steps: int = 10) -> list[float]:
    torch.manual_seed(0)
    model = attnlab.create_model(family, "debug", dropout=0.0).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    text = torch.randint(0, 40, (8 * 64 + 1,), generator=torch.Generator().manual_seed(0))
    losses = []
    for step in range(steps):
        starts = [(step * 7) % 32 + 64 * row for row in range(4)]
        x = torch.stack([text[s : s + 32] for s in starts])
        y = torch.stack([text[s + 1 : s + 33] for s in starts])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=x, shift_labels=y).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("family", sorted(BF16_FAMILIES))
def test_family_trains_under_bf16_autocast_as_in_fp32(family):
    fp32, bf16 = _train(family, False), _train(family, True)
    assert all(torch.isfinite(torch.tensor(bf16)))
    assert bf16[-1] < 0.9 * bf16[0]  # it learns
    assert abs(bf16[-1] - fp32[-1]) < 0.02 * fp32[-1]


@pytest.mark.parametrize("native", [True, False])
def test_the_trainer_resolves_auto_says_which_and_saves_it(tmp_path, cpu_with, native):
    """``dtype: auto`` (the default) becomes a concrete dtype: announced, in run_info.json, and in the saved
    train_config.json that ``attnlab eval`` repeats."""
    import io
    import json

    from rich.console import Console

    from attnlab.training import TrainConfig, train

    cpu_with(native)
    corpus = tmp_path / "text.txt"
    corpus.write_text("to be or not to be, that is the question\n" * 200)
    cfg = TrainConfig(model="gpt", preset="debug", data=str(corpus), batch_size=2, block_size=16, max_steps=2,
                      warmup_steps=0, eval_interval=2, eval_tokens=256, sample_tokens=0, out_dir=str(tmp_path / "run"),
                      progress=False, tensorboard=False, device="cpu")
    assert TrainConfig().dtype == "auto"
    out = io.StringIO()
    train(cfg, Console(file=out, width=200))
    expected = "bfloat16" if native else "float32"
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert saved["dtype"] == expected
    assert info["precision"].startswith("bf16 autocast" if native else "fp32")
    assert f"precision: {info['precision']}" in out.getvalue()

"""SophiaG: the update rule against an element-wise reference, a quadratic, a tiny LM, and the trainer."""

import json

import pytest
import torch
from safetensors.torch import load_file

import attnlab
from attnlab.training import TrainConfig, train
from attnlab.training.sophia import SophiaG, sampled_label_loss


def reference_sophia(theta, grads, hessian_grads, lr, betas, rho, wd, eps=1e-15):
    """Liu et al.'s SophiaG on Python floats, one parameter entry at a time.

    ``hessian_grads[t]`` is None or (ĝ, B): after step t, h ← β2·h + (1 − β2)·B·ĝ².
    """
    theta, m, h = list(theta), [0.0] * len(theta), [0.0] * len(theta)
    for g, hg in zip(grads, hessian_grads):
        for i in range(len(theta)):
            theta[i] *= 1 - lr * wd
            m[i] = betas[0] * m[i] + (1 - betas[0]) * g[i]
            ratio = min(abs(m[i]) / (rho * h[i] + eps), 1.0)
            theta[i] -= lr * (1.0 if m[i] > 0 else -1.0 if m[i] < 0 else 0.0) * ratio
        if hg is not None:
            g_hat, n = hg
            for i in range(len(theta)):
                h[i] = betas[1] * h[i] + (1 - betas[1]) * n * g_hat[i] ** 2
    return theta


def test_matches_the_elementwise_reference():
    torch.manual_seed(0)
    theta0 = torch.randn(7, dtype=torch.float64)
    grads = [torch.randn(7, dtype=torch.float64) for _ in range(5)]
    hess = [None, (torch.randn(7, dtype=torch.float64) * 0.1, 16), None, (torch.randn(7, dtype=torch.float64), 16), None]
    p = torch.nn.Parameter(theta0.clone())
    opt = SophiaG([p], lr=0.05, betas=(0.9, 0.95), rho=0.5, weight_decay=0.1)
    for g, hg in zip(grads, hess):
        p.grad = g.clone()
        opt.step()
        if hg is not None:
            p.grad = hg[0].clone()
            opt.update_hessian(n_samples=hg[1])
    want = reference_sophia(theta0.tolist(), [g.tolist() for g in grads],
                            [None if h is None else (h[0].tolist(), h[1]) for h in hess], 0.05, (0.9, 0.95), 0.5, 0.1)
    torch.testing.assert_close(p.detach(), torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_preconditioning_solves_an_ill_conditioned_quadratic():
    """f = ½ Σ a_i x_i², curvatures 1e-3..1e3: with the exact diagonal, x shrinks by 1 − lr/ρ per step for all i."""
    a = torch.logspace(-3, 3, 7, dtype=torch.float64)
    x = torch.nn.Parameter(torch.ones(7, dtype=torch.float64))
    opt = SophiaG([x], lr=0.5, betas=(0.0, 0.0), rho=1.0, weight_decay=0.0)
    x.grad = a.sqrt()  # B·ĝ² with B = 1 is then exactly the Hessian diagonal a
    opt.update_hessian(n_samples=1)
    for _ in range(40):
        x.grad = a * x.detach()
        opt.step()
    assert x.detach().abs().max() < 1e-9


def test_gnb_estimate_is_unbiased_for_the_gauss_newton_diagonal():
    """For logits = θ (one softmax), E[B·ĝ²] over sampled labels equals diag(p − p²), the GN/Fisher diagonal."""
    theta = torch.tensor([0.5, -1.0, 2.0, 0.0], requires_grad=True)
    p = theta.detach().softmax(-1)
    generator = torch.Generator().manual_seed(0)
    estimates = []
    for _ in range(4000):
        theta.grad = None
        sampled_label_loss(theta[None], generator).backward()
        estimates.append(theta.grad.clone() ** 2)
    torch.testing.assert_close(torch.stack(estimates).mean(0), p - p**2, rtol=0.08, atol=0.005)


def test_trains_a_tiny_lm():
    torch.manual_seed(0)
    model = attnlab.create_model("gpt", "debug").train()
    data = torch.randint(0, 256, (16, 4)).repeat(1, 8)
    opt = SophiaG(model.parameters(), lr=3e-3, rho=0.05, weight_decay=0.0)
    losses = []
    for step in range(40):
        loss = model(data, labels=data).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
        if step % 5 == 4:
            sampled_label_loss(model(data).logits).backward()
            opt.update_hessian(n_samples=data.numel())
            opt.zero_grad()
    assert losses[-1] < 0.6 * losses[0], losses


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    g = torch.Generator().manual_seed(0)
    words = "the king queen sword crown night day love death time".split()
    text = "\n".join(" ".join(words[i] for i in torch.randint(0, 10, (5,), generator=g).tolist()) for _ in range(600))
    path = tmp_path_factory.mktemp("corpus") / "verse.txt"
    path.write_text(text)
    return path


def run(corpus, out, **overrides):
    values = dict(model="lsw", preset="debug", data=str(corpus), batch_size=2, block_size=16, max_steps=6,
                  warmup_steps=1, eval_interval=3, eval_tokens=256, log_interval=1, sample_tokens=0,
                  out_dir=str(out), progress=False, tensorboard=False, seed=3, optimizer="sophia",
                  hessian_interval=2, lr=3e-3)
    values.update(overrides)
    return train(TrainConfig(**values))


@pytest.mark.parametrize("segment_stream", [False, True])
def test_trainer_resumes_sophia_runs_exactly(corpus, tmp_path, segment_stream):
    """Hessian refreshes draw their labels from (seed, step); segment streams checkpoint their memory."""
    straight = run(corpus, tmp_path / "a", segment_stream=segment_stream)
    run(corpus, tmp_path / "b", segment_stream=segment_stream, stop_at_step=3)
    assert json.loads((tmp_path / "b/checkpoints/latest.json").read_text())["step"] == 3
    resumed = run(corpus, tmp_path / "b", segment_stream=segment_stream, resume=True)
    assert resumed.train_loss == straight.train_loss
    a, b = load_file(str(tmp_path / "a/model.safetensors")), load_file(str(tmp_path / "b/model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)

"""SophiaG (Liu et al. 2023, "Sophia: A Scalable Stochastic Second-order Optimizer"), as in the authors' code.

Per parameter, with gradient g, momentum m and diagonal Hessian estimate h:

    θ ← θ · (1 − lr · weight_decay)                       decoupled weight decay
    m ← β1 · m + (1 − β1) · g
    θ ← θ − lr · sign(m) · min(|m| / (ρ · h + ε), 1)      the clipped, preconditioned step

and every k steps (``HessianRefresh``, called by the training loop after its step) the Gauss-Newton-Bartlett
estimate refreshes h:

    ĝ = ∇ mean_b CE(logits_b, ŷ_b),  ŷ_b ~ softmax(logits_b)   (labels sampled from the model itself)
    h ← β2 · h + (1 − β2) · B · ĝ ⊙ ĝ                         B = number of sampled labels

The authors keep EMA(ĝ⊙ĝ) and multiply by B in the step; here B goes into the estimate, which is the same
for a constant B and lets ``h`` be read as a Hessian diagonal. Before the first refresh h = 0, so the step is
sign(m) · lr (clipped), as in the original.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F


class SophiaG(torch.optim.Optimizer):
    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.965, 0.99),
        rho: float = 0.04,
        weight_decay: float = 0.1,
        eps: float = 1e-15,
    ):
        if lr <= 0 or rho <= 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"SophiaG needs lr > 0, rho > 0, weight_decay >= 0, betas in [0, 1): "
                             f"{lr}, {rho}, {weight_decay}, {betas}")
        super().__init__(params, dict(lr=lr, betas=betas, rho=rho, weight_decay=weight_decay, eps=eps))

    def _state(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["hessian"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def update_hessian(self, n_samples: int) -> None:
        """Fold the current gradients, those of a loss on sampled labels averaged over ``n_samples``, into h."""
        for group in self.param_groups:
            beta2 = group["betas"][1]
            for p in group["params"]:
                if p.grad is not None:
                    self._state(p)["hessian"].mul_(beta2).addcmul_(p.grad, p.grad, value=(1 - beta2) * n_samples)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, _), rho = group["lr"], group["betas"], group["rho"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self._state(p)
                state["step"] += 1
                p.mul_(1 - lr * group["weight_decay"])
                m = state["exp_avg"].mul_(beta1).add_(p.grad, alpha=1 - beta1)
                ratio = (m.abs() / (rho * state["hessian"] + group["eps"])).clamp_(max=1.0)
                p.addcmul_(m.sign(), ratio, value=-lr)
        return loss


def sampled_label_loss(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mean cross-entropy of labels drawn from the model's own softmax: the GNB estimator's loss.

    Its gradient ĝ satisfies E[B · ĝ ⊙ ĝ] = diag of the Gauss-Newton matrix (Bartlett's identity).
    """
    flat = logits.reshape(-1, logits.shape[-1]).float()
    with torch.no_grad():
        labels = torch.multinomial(flat.softmax(-1), 1, generator=generator).squeeze(-1)
    return F.cross_entropy(flat, labels)


class HessianRefresh:
    """SophiaG's curvature estimate, refreshed after every ``interval``-th optimizer step on one micro-batch.

    The labels are sampled from the model with a generator seeded by (seed, step, rank), so a resumed run
    draws the same labels; ``world_size`` processes each contribute one micro-batch's worth of samples.
    """

    def __init__(self, optimizer: SophiaG, interval: int, seed: int, rank: int = 0, world_size: int = 1):
        self.optimizer, self.interval = optimizer, interval
        self.seed, self.rank, self.world_size = seed, rank, world_size

    def after_step(self, step: int, logits_of: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor) -> None:
        """After optimizer step ``step`` (0-based): refresh h when it is due, from ``logits_of(inputs)``."""
        if (step + 1) % self.interval:
            return
        generator = torch.Generator(device=inputs.device).manual_seed(hash((self.seed, step, self.rank)) & (2**63 - 1))
        sampled_label_loss(logits_of(inputs), generator).backward()
        self.optimizer.update_hessian(n_samples=inputs.numel() * self.world_size)
        self.optimizer.zero_grad(set_to_none=True)

"""SimCTG contrastive loss against a double loop written from the paper's formula."""

import torch
import torch.nn.functional as F

from attnlab.losses import simctg_loss


def naive_simctg(hidden, margin, valid):
    total, pairs = 0.0, 0
    for b in range(hidden.shape[0]):
        for i in range(hidden.shape[1]):
            for j in range(hidden.shape[1]):
                if i == j or not (valid[b, i] and valid[b, j]):
                    continue
                s_ii = F.cosine_similarity(hidden[b, i], hidden[b, i], dim=0)
                s_ij = F.cosine_similarity(hidden[b, i], hidden[b, j], dim=0)
                total += max(0.0, margin - s_ii.item() + s_ij.item())
                pairs += 1
    return total / pairs


def test_matches_the_double_loop_with_padding():
    torch.manual_seed(0)
    hidden = torch.randn(3, 7, 5, dtype=torch.float64) + 0.8  # a shared offset: some pairs beat the margin
    valid = torch.ones(3, 7, dtype=torch.bool)
    valid[0, :2] = False  # left padding
    valid[2, 5:] = False  # right padding
    got = simctg_loss(hidden, 0.5, valid)
    assert 0 < got.item() < 0.5
    assert abs(got.item() - naive_simctg(hidden, 0.5, valid)) < 1e-12
    no_pad = simctg_loss(hidden, 0.5)
    assert abs(no_pad.item() - naive_simctg(hidden, 0.5, torch.ones_like(valid))) < 1e-12


def test_collapsed_states_cost_the_margin_and_spread_states_cost_nothing():
    same = torch.ones(2, 4, 3)
    assert abs(simctg_loss(same, 0.5).item() - 0.5) < 1e-6
    orthogonal = torch.eye(4)[None]
    assert simctg_loss(orthogonal, 0.5).item() == 0.0


def test_gradient_pushes_states_apart():
    hidden = (torch.ones(1, 4, 3) + 0.1 * torch.randn(1, 4, 3)).requires_grad_()
    simctg_loss(hidden, 0.5).backward()
    moved = hidden - 0.5 * hidden.grad
    assert simctg_loss(moved, 0.5) < simctg_loss(hidden, 0.5)

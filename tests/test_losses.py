"""Tests for atr_core.training.losses: the max-margin ranking loss and caption-averaged similarities."""

from __future__ import annotations

import pytest
import torch

from atr_core.training.losses import MaxMarginRankingLoss, caption_averaged_similarity


def loop_loss(s: torch.Tensor, m: float) -> tuple[float, int]:
    """Sum of both hinge directions over i != j, and the number of hinge terms."""
    n = s.shape[0]
    total, terms = 0.0, 0
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            total += max(0.0, m - s[i, i].item() + s[i, j].item())  # text i vs wrong audio j
            total += max(0.0, m - s[i, i].item() + s[j, i].item())  # audio i vs wrong text j
            terms += 2
    return total, terms


def test_loss_equals_a_direct_loop_over_random_matrices():
    gen = torch.Generator().manual_seed(0)
    for case in range(200):
        n = int(torch.randint(1, 10, (1,), generator=gen))
        margin = float(torch.rand(1, generator=gen)) * 0.5
        s = (torch.rand(n, n, generator=gen, dtype=torch.float64) * 2 - 1) * (0.3 if case % 2 else 1.0)
        total, terms = loop_loss(s, margin)
        mean = MaxMarginRankingLoss(margin)(s)
        batch = MaxMarginRankingLoss(margin, reduction="batch")(s)
        assert terms == 2 * n * (n - 1)
        assert mean.item() == pytest.approx(total / terms if terms else 0.0, abs=1e-12)
        assert batch.item() == pytest.approx(total / n, abs=1e-12)


def test_default_margin_and_n1_is_zero_without_nan():
    loss = MaxMarginRankingLoss()
    assert loss.margin == 0.2 and loss.reduction == "mean"
    s = torch.tensor([[0.3]], requires_grad=True)
    out = loss(s)
    out.backward()
    assert out.item() == 0.0 and torch.isfinite(s.grad).all()


def test_loss_is_zero_when_positives_win_by_the_margin_and_gradients_push_the_right_way():
    gen = torch.Generator().manual_seed(1)
    for _ in range(50):
        n = int(torch.randint(2, 8, (1,), generator=gen))
        s = torch.rand(n, n, generator=gen) * 0.5
        s.fill_diagonal_(0.75)
        assert MaxMarginRankingLoss(0.2)(s).item() == 0.0
        s = (torch.rand(n, n, generator=gen) * 2 - 1).requires_grad_(True)
        MaxMarginRankingLoss(0.2)(s).backward()
        assert (s.grad.diagonal() <= 0).all()  # raising a positive never increases the loss
        off = ~torch.eye(n, dtype=torch.bool)
        assert (s.grad[off] >= 0).all()  # raising a negative never decreases it


def test_loss_rejects_non_square():
    with pytest.raises(ValueError, match="square"):
        MaxMarginRankingLoss()(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="reduction"):
        MaxMarginRankingLoss(reduction="sum")


def test_caption_averaged_similarity_equals_a_loop():
    gen = torch.Generator().manual_seed(2)
    for _ in range(50):
        b, q, e = (int(torch.randint(1, 6, (1,), generator=gen)) for _ in range(3))
        text = torch.randn(b * q, e, generator=gen, dtype=torch.float64)
        audio = torch.randn(b, e, generator=gen, dtype=torch.float64)
        got = caption_averaged_similarity(text, audio, q)
        expected = torch.zeros(b, b, dtype=torch.float64)
        for i in range(b):
            for j in range(b):
                expected[i, j] = sum(text[i * q + c] @ audio[j] for c in range(q)) / q  # audio-major rows
        torch.testing.assert_close(got, expected)
        if q == 1:
            torch.testing.assert_close(got, text @ audio.T)
    with pytest.raises(ValueError, match="clips x"):
        caption_averaged_similarity(torch.zeros(7, 2), torch.zeros(2, 2), 3)

"""Schedule resolution, precise BatchNorm statistics, embedding-spread diagnostics and warnings."""

from __future__ import annotations

import math

import pytest
import torch

from atr_core.model.retrieval import ModelConfig, RetrievalModel
from atr_core.training import loop as training
from atr_core.training.loop import (
    COLLAPSE_COSINE,
    health_warnings,
    mean_pairwise_cosine,
    recompute_batchnorm_stats,
    resolve_schedule,
)

# --------------------------------------------------------------------------- schedule


@pytest.mark.parametrize("n_train", [3839, 49838, 5000])
def test_clotho_and_audiocaps_sized_sets_keep_the_papers_schedule(n_train):
    s = resolve_schedule(n_train)
    assert (s.batch_size, s.epochs, s.lr_gamma) == (128, 20, 0.95)
    assert s.auto == ("batch_size", "epochs", "lr_gamma")


@pytest.mark.parametrize("n_train", [20, 90, 150, 186, 300, 450, 540, 1000, 3000])
def test_small_sets_get_enough_optimizer_steps_and_the_papers_total_decay(n_train):
    s = resolve_schedule(n_train)
    steps_per_epoch = math.ceil(n_train / s.batch_size)
    assert steps_per_epoch * s.epochs >= training.MIN_STEPS
    assert steps_per_epoch >= training.BATCHES_PER_EPOCH - 2 or s.batch_size == training.MIN_BATCH
    assert 16 <= s.batch_size <= 128 and s.batch_size & (s.batch_size - 1) == 0
    assert s.lr_gamma ** s.epochs == pytest.approx(0.95**20)


def test_given_values_are_kept_and_given_epochs_keep_the_papers_gamma():
    s = resolve_schedule(186, batch_size=64, epochs=7, lr_gamma=0.5)
    assert (s.batch_size, s.epochs, s.lr_gamma, s.auto) == (64, 7, 0.5, ())
    s = resolve_schedule(186, epochs=7)
    assert (s.epochs, s.lr_gamma) == (7, 0.95)  # raising --epochs on resume keeps the run's gamma
    with pytest.raises(ValueError):
        resolve_schedule(1)


# --------------------------------------------------------------------------- precise BatchNorm


class _Source:
    """A stand-in ClipSource: fixed batches of (audio, mask, text, mask)."""

    def __init__(self, batches):
        self._batches = batches

    def batches(self, batch_size, epoch=0, shuffle=False, seed=0):
        from types import SimpleNamespace

        for a, am, t, tm in self._batches:
            yield SimpleNamespace(to=lambda _d, a=a, am=am, t=t, tm=tm: SimpleNamespace(
                audio=a, audio_mask=am, text=t, text_mask=tm))


def _tiny_model() -> RetrievalModel:
    torch.manual_seed(0)
    return RetrievalModel(ModelConfig(audio_dim=6, text_dim=5, embed_dim=8, audio_clusters=2,
                                      text_clusters=3, max_segments=4))


def _batches(n: int, spread: float = 1.0):
    """Random batches; ``spread`` < 1 makes every word vector nearly the same (collinear vectors)."""
    g = torch.Generator().manual_seed(1)
    common = torch.randn(5, generator=g)
    return [(torch.rand(4, 3, 6, generator=g), torch.ones(4, 3),
             (1 - spread) * common + spread * torch.randn(8, 4, 5, generator=g), torch.ones(8, 4))
            for _ in range(n)]


def test_precise_statistics_are_the_mean_of_the_training_batches_statistics():
    model = _tiny_model()
    batches = _batches(5)
    bn = model.text.geu.gating.batch_norm
    captured = []
    hook = bn.register_forward_hook(lambda m, i, o: captured.append(i[0].detach()))
    seen = recompute_batchnorm_stats(model, _Source(batches), torch.device("cpu"), 4, epoch=1, seed=0)
    hook.remove()
    assert seen == 5 and not model.training
    assert bn.momentum == 0.1  # restored
    expected_mean = torch.stack([x.mean(0) for x in captured]).mean(0)
    expected_var = torch.stack([x.var(0, unbiased=True) for x in captured]).mean(0)
    torch.testing.assert_close(bn.running_mean, expected_mean)
    torch.testing.assert_close(bn.running_var, expected_var)


def test_precise_statistics_make_eval_mode_agree_with_train_mode_where_running_averages_collapse():
    """The failure seen on small real corpora: nearly identical text inputs (variance ~1e-7 after the
    FC) and a few dozen steps leave running_var near 0.9 ** steps, so eval mode squashes differences
    that train mode amplifies. Recomputed statistics give eval embeddings like train-mode ones."""
    model = _tiny_model()
    batches = _batches(3, spread=3e-2)
    a, am, t, tm = batches[0]
    model.train()
    for _ in range(40):  # 40 forward passes: running_var = 0.9**40 * 1 + (1 - 0.9**40) * tiny
        model.encode_text(t, tm)
    with torch.no_grad():
        train_mode = model.encode_text(t, tm)
        model.eval()
        stale = model.encode_text(t, tm)
    assert mean_pairwise_cosine(stale) > COLLAPSE_COSINE > 0.97 > mean_pairwise_cosine(train_mode)
    recompute_batchnorm_stats(model, _Source(batches[:1]), torch.device("cpu"), 4, epoch=1, seed=0)
    with torch.no_grad():
        precise = model.encode_text(t, tm)
    assert mean_pairwise_cosine(precise) == pytest.approx(mean_pairwise_cosine(train_mode), abs=0.02)


def test_mean_pairwise_cosine_matches_the_direct_computation():
    x = torch.randn(7, 5, generator=torch.Generator().manual_seed(0))
    u = torch.nn.functional.normalize(x, dim=-1)
    s = u @ u.T
    direct = (s.sum() - s.diag().sum()) / (7 * 6)
    assert mean_pairwise_cosine(x) == pytest.approx(float(direct), abs=1e-6)
    assert mean_pairwise_cosine(torch.ones(4, 3)) == pytest.approx(1.0)


# --------------------------------------------------------------------------- warnings


def _rec(epoch, loss, audio=0.3, text=0.2):
    return {"epoch": epoch, "train_loss": loss, "spread": {"audio": audio, "text": text}}


def test_warnings_name_a_collapsed_side_and_a_loss_stuck_at_the_margin():
    assert health_warnings([_rec(1, 0.15), _rec(2, 0.1), _rec(3, 0.05)], 0.2) == []
    collapsed = health_warnings([_rec(1, 0.2, text=COLLAPSE_COSINE + 0.005)], 0.2)
    assert len(collapsed) == 1 and "text embeddings have collapsed" in collapsed[0]
    assert "--word2vec" in collapsed[0]
    stuck = health_warnings([_rec(1, 0.2), _rec(2, 0.1999), _rec(3, 0.2001)], 0.2)
    assert len(stuck) == 1 and "stayed at the margin" in stuck[0]

"""Tests for atr_core.model.retrieval: context gating, GEU, encoders, config round trip, parameter count."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from atr_core.errors import InputError, SchemaError
from atr_core.model.aggregation import AGGREGATIONS
from atr_core.model.retrieval import (
    DEFAULT_MAX_SEGMENTS,
    AudioEncoder,
    ContextGating,
    GatedEmbeddingUnit,
    ModelConfig,
    RetrievalModel,
    TextEncoder,
    l2renorm,
)


def tiny(aggregation: str = "netrvlad", **kw) -> ModelConfig:
    base = dict(
        audio_dim=6,
        text_dim=4,
        embed_dim=5,
        aggregation=aggregation,
        audio_clusters=3,
        text_clusters=2,
        lstm_hidden=7,
        max_segments=9,
        max_words=6,
    )
    return ModelConfig(**{**base, **kw})


def batch(gen: torch.Generator, b: int, n: int, d: int):
    lengths = torch.randint(1, n + 1, (b,), generator=gen)
    mask = (torch.arange(n)[None, :] < lengths[:, None]).float()
    x = torch.rand(b, n, d, generator=gen) * mask.unsqueeze(-1)  # non-negative like CNN14 features
    return x, mask


def test_context_gating_and_geu_formulas():
    torch.manual_seed(0)
    for train in (True, False):
        cg = ContextGating(5).train(train)
        x = torch.randn(7, 5)
        bn = copy.deepcopy(cg.batch_norm)
        expected = x * torch.sigmoid(bn(x @ cg.fc.weight.T + cg.fc.bias))
        torch.testing.assert_close(cg(x), expected)
        geu = GatedEmbeddingUnit(3, 5).train(train)
        x = torch.randn(7, 3)
        h = geu.fc(x)
        expected = F.normalize(
            h * torch.sigmoid(copy.deepcopy(geu.gating.batch_norm)(geu.gating.fc(h))), dim=-1
        )
        torch.testing.assert_close(geu(x), expected)
        torch.testing.assert_close(geu(x).norm(dim=-1), torch.ones(7))


def test_l2renorm_formula():
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        x = torch.randn(4, 6, generator=gen) * 10 ** float(torch.randint(-3, 4, (1,), generator=gen))
        torch.testing.assert_close(
            l2renorm(x), (x / (x.norm(dim=-1, keepdim=True) + 1e-7)).clamp(-1000, 1000)
        )
    assert l2renorm(torch.zeros(2, 3)).abs().sum() == 0


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_encoders_give_unit_vectors_and_ignore_padding(aggregation):
    cfg = tiny(aggregation)
    gen = torch.Generator().manual_seed(2)
    torch.manual_seed(2)
    model = RetrievalModel(cfg)
    for case in range(6):
        b = 3 + case % 3
        a, am = batch(gen, b, 5, cfg.audio_dim)
        t, tm = batch(gen, b, 4, cfg.text_dim)
        for train in (True, False):
            m1 = copy.deepcopy(model).train(train)
            m2 = copy.deepcopy(model).train(train)
            ea, et = m1.encode_audio(a, am), m1.encode_text(t, tm)
            assert ea.shape == (b, cfg.embed_dim) and et.shape == (b, cfg.embed_dim)
            torch.testing.assert_close(ea.norm(dim=-1), torch.ones(b))
            torch.testing.assert_close(et.norm(dim=-1), torch.ones(b))
            # longer padding full of garbage changes nothing
            a2 = torch.cat([a, torch.full((b, 4, cfg.audio_dim), 1e4)], dim=1)
            am2 = torch.cat([am, torch.zeros(b, 4)], dim=1)
            a2 = torch.where(am2.bool().unsqueeze(-1), a2, torch.full_like(a2, 1e4))
            t2 = torch.where(tm.bool().unsqueeze(-1), t, torch.full_like(t, -1e4))
            torch.testing.assert_close(m2.encode_audio(a2, am2), ea, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(m2.encode_text(t2, tm), et, rtol=1e-5, atol=1e-6)


def test_similarity_is_cosine_and_forward_returns_both_sides():
    cfg = tiny()
    torch.manual_seed(3)
    model = RetrievalModel(cfg).eval()
    gen = torch.Generator().manual_seed(3)
    a, am = batch(gen, 4, 5, cfg.audio_dim)
    t, tm = batch(gen, 6, 4, cfg.text_dim)
    et, ea = model(a, am, t, tm)
    sim = model.similarity(et, ea)
    assert sim.shape == (6, 4)
    torch.testing.assert_close(sim, F.cosine_similarity(et[:, None, :], ea[None, :, :], dim=-1))
    assert sim.abs().max() <= 1 + 1e-5


def test_audio_side_is_renormalised_text_side_is_not():
    """Max pooling is positively homogeneous: only the audio path's l2renorm removes input scale."""
    cfg = tiny("max")
    torch.manual_seed(4)
    model = RetrievalModel(cfg).eval()
    gen = torch.Generator().manual_seed(4)
    a, am = batch(gen, 3, 5, cfg.audio_dim)
    t, tm = batch(gen, 3, 4, cfg.text_dim)
    torch.testing.assert_close(model.encode_audio(a * 37.0, am), model.encode_audio(a, am))
    assert not torch.allclose(model.encode_text(t * 37.0, tm), model.encode_text(t, tm), atol=1e-4)


def test_default_config_is_the_papers_and_counts_71m_parameters():
    cfg = ModelConfig()
    assert (cfg.audio_dim, cfg.text_dim, cfg.embed_dim) == (2048, 300, 2048)
    assert (cfg.aggregation, cfg.audio_clusters, cfg.text_clusters) == ("netrvlad", 12, 20)
    assert (cfg.max_segments, cfg.max_words, cfg.use_mask) == (31, 20, True)
    assert DEFAULT_MAX_SEGMENTS == {"audiocaps": 31, "clotho": 90}
    with torch.device("meta"):
        model = RetrievalModel(cfg)
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)

    def side(d, k):
        pooled = d * k
        return d * k + 2 * k + pooled * 2048 + 2048 + 2048 * 2048 + 2048 + 2 * 2048

    assert n == side(2048, 12) + side(300, 20)
    assert 70.5e6 < n < 71.5e6
    assert isinstance(model.audio, AudioEncoder) and isinstance(model.text, TextEncoder)
    assert model.audio.geu.fc.in_features == 24576 and model.text.geu.fc.in_features == 6000


def test_config_round_trip_through_json():
    cfg = tiny(
        "lstm",
        use_mask=False,
        feature="lms",
        checkpoint_sha256="ab" * 32,
        word_vectors={"source": "train:4", "sha256": "trained", "vocab_size": 10, "dim": 4, "limit": None},
    )
    again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert ModelConfig.from_dict({}) == ModelConfig()


def test_config_refuses_unknown_keys_and_bad_types():
    good = tiny().to_dict()
    with pytest.raises(SchemaError, match="unknown model config key.*hidden_size"):
        ModelConfig.from_dict({**good, "hidden_size": 3})
    for key, bad in (("audio_dim", "2048"), ("use_mask", 1), ("audio_clusters", True), ("word_vectors", [])):
        with pytest.raises(SchemaError, match=key):
            ModelConfig.from_dict({**good, key: bad})
    with pytest.raises(SchemaError, match="aggregation"):
        ModelConfig.from_dict({**good, "aggregation": "gru"})
    with pytest.raises(SchemaError):
        ModelConfig.from_dict([1, 2])  # type: ignore[arg-type]
    with pytest.raises(InputError, match="embed_dim"):
        dataclasses.replace(ModelConfig(), embed_dim=0)
    with pytest.raises(InputError, match="aggregation"):
        ModelConfig(aggregation="transformer")

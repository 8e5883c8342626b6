"""Tests for atr_core.model.directory: the trained-model directory (save, load, identity checks)."""

from __future__ import annotations

import json
import os
import uuid

import fsspec
import numpy as np
import pytest
import torch
from gensim.models import KeyedVectors

from atr_core import __version__
from atr_core.errors import CheckpointError, ConfigMismatchError, SchemaError
from atr_core.model.directory import load_model, read_config, save_model
from atr_core.model.retrieval import ModelConfig, RetrievalModel
from atr_core.runtime.storage import sha256_file
from atr_core.text.word_vectors import load_word_vectors, train_word_vectors

TEXT_DIM = 4
CAPTIONS = ["a dog barks at a car", "rain on a roof", "a car engine starts", "birds sing near water"] * 3


def tiny_config(**kw) -> ModelConfig:
    base = dict(
        audio_dim=6,
        text_dim=TEXT_DIM,
        embed_dim=5,
        audio_clusters=3,
        text_clusters=2,
        lstm_hidden=7,
        max_segments=9,
        max_words=6,
        checkpoint_sha256="c" * 64,
    )
    return ModelConfig(**{**base, **kw})


def trained_model(cfg: ModelConfig, seed: int = 0) -> RetrievalModel:
    """A model whose BN running statistics moved away from their defaults."""
    torch.manual_seed(seed)
    model = RetrievalModel(cfg).train()
    gen = torch.Generator().manual_seed(seed)
    for _ in range(3):
        model.encode_audio(torch.rand(4, 5, cfg.audio_dim, generator=gen), torch.ones(4, 5))
        model.encode_text(torch.randn(4, 3, cfg.text_dim, generator=gen), torch.ones(4, 3))
    return model.eval()


def outputs(model, wv, cfg):
    gen = torch.Generator().manual_seed(9)
    audio = torch.rand(3, 5, cfg.audio_dim, generator=gen)
    mask = torch.tensor([[1.0] * 5, [1.0] * 2 + [0.0] * 3, [1.0] * 4 + [0.0]])
    text, tmask = wv.encode_many(CAPTIONS[:4], cfg.max_words)
    with torch.no_grad():
        return model.encode_audio(audio, mask), model.encode_text(
            torch.from_numpy(text), torch.from_numpy(tmask)
        )


def write_pretrained(path, seed=0):
    rng = np.random.default_rng(seed)
    kv = KeyedVectors(TEXT_DIM)
    words = sorted({w for c in CAPTIONS for w in c.split()})
    kv.add_vectors(words, rng.normal(size=(len(words), TEXT_DIM)).astype(np.float32))
    kv.save_word2vec_format(str(path), binary=True)
    return path


def test_round_trip_with_trained_vectors(tmp_path):
    cfg = tiny_config()
    wv = train_word_vectors(CAPTIONS, dim=TEXT_DIM, seed=1)
    model = trained_model(cfg)
    save_model(tmp_path / "m", model, cfg, wv)
    assert cfg.word_vectors == {}  # the caller's config is not modified
    assert sorted(os.listdir(tmp_path / "m")) == ["config.json", "model.pt", "word_vectors"]
    state = torch.load(tmp_path / "m" / "model.pt", weights_only=True)
    assert set(state) == set(model.state_dict())
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["schema_version"] == 1 and meta["package_version"] == __version__
    assert meta["files"]["model.pt"] == sha256_file(tmp_path / "m" / "model.pt")

    loaded, cfg2, wv2 = load_model(tmp_path / "m")
    assert not loaded.training and cfg2.word_vectors == wv.identity
    assert cfg2 == ModelConfig(**{**cfg.to_dict(), "word_vectors": wv.identity})
    np.testing.assert_array_equal(wv2.kv.vectors, wv.kv.vectors)
    for a, b in zip(outputs(model, wv, cfg), outputs(loaded, wv2, cfg2), strict=True):
        assert torch.equal(a, b)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


def test_pretrained_vectors_are_reloaded_from_source_and_checked(tmp_path):
    cfg = tiny_config(aggregation="netvlad")
    src = write_pretrained(tmp_path / "vectors.bin")
    wv = load_word_vectors(str(src))
    model = trained_model(cfg, seed=1)
    save_model(tmp_path / "m", model, cfg, wv)
    assert not (tmp_path / "m" / "word_vectors").exists()  # only the identity is stored
    _, cfg2, wv2 = load_model(tmp_path / "m")
    assert cfg2.word_vectors["source"] == str(src.resolve()) and wv2.identity == wv.identity

    # an override path with the same content is accepted
    copy = tmp_path / "elsewhere.bin"
    copy.write_bytes(src.read_bytes())
    _, _, wv3 = load_model(tmp_path / "m", word_vectors=str(copy))
    np.testing.assert_array_equal(wv3.kv.vectors, wv.kv.vectors)

    # different vectors at the recorded source or the override: refused
    other = write_pretrained(tmp_path / "other.bin", seed=5)
    with pytest.raises(ConfigMismatchError, match="sha256"):
        load_model(tmp_path / "m", word_vectors=str(other))
    write_pretrained(src, seed=6)
    with pytest.raises(ConfigMismatchError, match="sha256"):
        load_model(tmp_path / "m")
    model3, _, none = load_model(tmp_path / "m", with_word_vectors=False)
    assert none is None and not model3.training


def test_limit_is_reapplied_on_reload(tmp_path):
    cfg = tiny_config()
    src = write_pretrained(tmp_path / "vectors.bin")
    wv = load_word_vectors(str(src), limit=5)
    save_model(tmp_path / "m", trained_model(cfg), cfg, wv)
    _, _, wv2 = load_model(tmp_path / "m")
    assert len(wv2) == 5 and wv2.identity == wv.identity


def test_trained_vectors_override_directory_is_checked(tmp_path):
    cfg = tiny_config()
    wv = train_word_vectors(CAPTIONS, dim=TEXT_DIM, seed=1)
    save_model(tmp_path / "m", trained_model(cfg), cfg, wv)
    wv.save(tmp_path / "same")
    assert load_model(tmp_path / "m", word_vectors=str(tmp_path / "same"))[2].identity == wv.identity
    train_word_vectors(CAPTIONS, dim=TEXT_DIM, seed=2).save(tmp_path / "other")
    with pytest.raises(ConfigMismatchError, match="content_sha256"):
        load_model(tmp_path / "m", word_vectors=str(tmp_path / "other"))


def test_schema_and_integrity_errors(tmp_path):
    cfg = tiny_config()
    wv = train_word_vectors(CAPTIONS, dim=TEXT_DIM, seed=1)
    d = tmp_path / "m"
    save_model(d, trained_model(cfg), cfg, wv)
    meta_path = d / "config.json"
    meta = json.loads(meta_path.read_text())

    with pytest.raises(CheckpointError, match="config.json: missing"):
        load_model(tmp_path / "nothing")
    meta_path.write_text(json.dumps({**meta, "schema_version": 2}))
    with pytest.raises(SchemaError, match="schema_version 2 is not supported; expected 1"):
        load_model(d)
    meta_path.write_text(json.dumps({**meta, "kind": "something"}))
    with pytest.raises(SchemaError, match="not an atr model"):
        read_config(d)
    meta_path.write_text(json.dumps({**meta, "config": {**meta["config"], "n_heads": 4}}))
    with pytest.raises(SchemaError, match="n_heads"):
        load_model(d)
    meta_path.write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_model(d)

    # weights changed after the config was written
    meta_path.write_text(json.dumps(meta))
    state = torch.load(d / "model.pt", weights_only=True)
    state["audio.geu.fc.bias"] += 1
    torch.save(state, d / "model.pt")
    with pytest.raises(ConfigMismatchError, match="sha256 differs"):
        load_model(d)
    # a config whose architecture does not fit the weights
    meta_path.write_text(json.dumps({**meta, "files": {}, "config": {**meta["config"], "embed_dim": 8}}))
    with pytest.raises(ConfigMismatchError, match="do not fit"):
        load_model(d)
    # a non-state-dict pickle is refused by weights_only loading
    meta_path.write_text(json.dumps({**meta, "files": {}}))
    torch.save({"bad": object}, d / "model.pt")
    with pytest.raises(CheckpointError, match="cannot load state_dict"):
        load_model(d)


def test_save_refuses_a_config_that_does_not_describe_the_model(tmp_path):
    cfg = tiny_config()
    wv = train_word_vectors(CAPTIONS, dim=TEXT_DIM, seed=1)
    with pytest.raises(ConfigMismatchError, match="embed_dim"):
        save_model(tmp_path / "m", trained_model(cfg), tiny_config(embed_dim=6), wv)
    wv8 = train_word_vectors(CAPTIONS, dim=8, seed=1)
    with pytest.raises(ConfigMismatchError, match="dim 8"):
        save_model(tmp_path / "m", trained_model(cfg), cfg, wv8)


def test_overwrite_keeps_other_files_and_leaves_no_temporaries(tmp_path):
    cfg = tiny_config()
    d = tmp_path / "m"
    d.mkdir()
    (d / "train_log.jsonl").write_text("{}\n")
    save_model(d, trained_model(cfg, seed=1), cfg, train_word_vectors(CAPTIONS, dim=TEXT_DIM, seed=1))
    wv2 = train_word_vectors(CAPTIONS, dim=TEXT_DIM, seed=2)
    model2 = trained_model(cfg, seed=2)
    save_model(d, model2, cfg, wv2)
    assert sorted(os.listdir(d)) == ["config.json", "model.pt", "train_log.jsonl", "word_vectors"]
    assert sorted(os.listdir(d / "word_vectors")) == ["identity.json", "vectors.bin"]
    loaded, _, wv_loaded = load_model(d)
    assert wv_loaded.identity == wv2.identity
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model2.state_dict().items())


def test_fsspec_url_round_trip():
    url = f"memory://atr-test-{uuid.uuid4().hex}/run/model"
    cfg = tiny_config(aggregation="max")
    wv = train_word_vectors(CAPTIONS, dim=TEXT_DIM, seed=3)
    model = trained_model(cfg, seed=3)
    try:
        save_model(url, model, cfg, wv)
        fs, root = fsspec.core.url_to_fs(url)
        names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(root, detail=False))
        assert names == ["config.json", "model.pt", "word_vectors"]
        loaded, cfg2, wv2 = load_model(url)
        assert cfg2.aggregation == "max" and wv2.identity == wv.identity
        for a, b in zip(outputs(model, wv, cfg), outputs(loaded, wv2, cfg2), strict=True):
            assert torch.equal(a, b)
    finally:
        fs, root = fsspec.core.url_to_fs(url)
        fs.rm(root.split("/run")[0], recursive=True)

"""atr_core.text.word_vectors: the tokeniser rule, word-vector files, encoding, trained fallback vectors."""

from __future__ import annotations

import functools
import gzip
import http.server
import json
import os
import random
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from gensim.models import KeyedVectors

from atr_core.errors import InputError, SchemaError, WordVectorsError
from atr_core.runtime.storage import sha256_file
from atr_core.text import word_vectors as text
from atr_core.text.word_vectors import (
    MAX_WORDS,
    WordVectors,
    content_sha256,
    load_word_vectors,
    tokenize,
    train_dim,
    train_word_vectors,
)

DIM = 6
WORDS = ["dog", "Dog", "barks", "A", "car", "Paris", "engine", "rain", "it's", "water", "birds", "2", "x"]


def make_kv(words=WORDS, dim=DIM, seed=0) -> KeyedVectors:
    rng = np.random.default_rng(seed)
    kv = KeyedVectors(dim)
    kv.add_vectors(list(words), rng.normal(size=(len(words), dim)).astype(np.float32))
    return kv


def write_w2v(path: Path, kv: KeyedVectors, binary: bool) -> Path:
    kv.save_word2vec_format(str(path), binary=binary)
    return path


@pytest.fixture
def wv() -> WordVectors:
    return WordVectors(make_kv(), {"source": "test", "sha256": "x", "limit": None})


def random_caption(rng: random.Random) -> str:
    pieces = WORDS + [
        "DOG",
        "bArKs",
        "paris",
        "zzz",
        "the",
        "!",
        ",",
        "...",
        "dogs'",
        "rock'n'roll",
        "é",
        "_",
        "über",
        "ça",
        "’s",
        "--",
        "42",
        "\t",
        "\n",
        "  ",
    ]
    return " ".join(
        rng.choice(pieces) + rng.choice(["", ".", ",", "'", "?"]) for _ in range(rng.randint(0, 30))
    )


# --- tokeniser -----------------------------------------------------------------------------------


def test_tokenize_examples():
    assert tokenize("A dog's bark, 2 times!") == ["A", "dog's", "bark", "2", "times"]
    assert tokenize("'quoted' words_with_underscores rock'n'roll dogs'") == [
        "quoted",
        "words",
        "with",
        "underscores",
        "rock'n'roll",
        "dogs",
    ]
    assert tokenize("it\u2019s Über-cool ça") == ["it's", "Über", "cool", "ça"]
    assert tokenize("") == [] and tokenize(" ,.;!? ") == []


def test_tokenize_resolves_surface_then_lower_then_title():
    vocab = {"Dog", "dog", "paris", "Paris", "barks", "it's"}
    assert tokenize("Dog dog DOG", vocab) == ["Dog", "dog", "dog"]  # surface, surface, lower
    assert tokenize("PARIS paris", vocab) == ["paris", "paris"]  # lower before Title
    assert tokenize("BARKS zzz It's", vocab) == ["barks", "it's"]  # OOV 'zzz' dropped
    assert tokenize("Paris", {"Paris"}) == ["Paris"] and tokenize("pARIS", {"Paris"}) == ["Paris"]


def test_tokenize_properties_over_random_captions():
    rng = random.Random(0)
    vocab = set(WORDS) | {"paris"}
    allowed = re.compile(r"^[^\W_]+('[^\W_]+)*$")
    for _ in range(500):
        cap = random_caption(rng)
        words = tokenize(cap)
        assert words == tokenize(cap)  # deterministic
        assert all(allowed.match(w) for w in words)
        kept = tokenize(cap, vocab)
        assert kept == tokenize(cap, vocab)
        assert all(k in vocab for k in kept)
        # every kept token is a case variant of a surface token, in order
        it = iter(words)
        for k in kept:
            assert any(w == k or w.lower() == k or w.capitalize() == k for w in it)
        assert len(kept) == sum(
            any(f in vocab for f in (w, w.lower(), w[:1].upper() + w[1:].lower())) for w in words
        )


def test_tokenize_rejects_non_strings():
    with pytest.raises(InputError, match="caption must be a string"):
        tokenize(None)  # type: ignore[arg-type]


def test_train_dim():
    assert train_dim("train:300") == 300 and train_dim("GoogleNews.bin") is None
    for bad in ("train:", "train:0", "train:x", "train:-3"):
        with pytest.raises(WordVectorsError):
            train_dim(bad)


# --- lookup / encode ---------------------------------------------------------------------------


def test_lookup_rows_are_the_vectors_of_kept_tokens(wv):
    rng = random.Random(1)
    for _ in range(200):
        cap = random_caption(rng)
        keys = wv.tokens(cap)
        mat = wv.lookup(cap)
        assert mat.dtype == np.float32 and np.isfinite(mat).all()
        if keys:
            np.testing.assert_array_equal(mat, np.stack([wv.kv[k] for k in keys]))
        else:
            np.testing.assert_array_equal(mat, wv.unknown_vector[None])


def test_unknown_vector_is_mean_of_first_sorted_words(monkeypatch):
    for n_first in (1, 3, 5, 50):
        monkeypatch.setattr(text, "UNKNOWN_VOCAB_WORDS", n_first)
        kv = make_kv(seed=n_first)
        w = WordVectors(kv, {"source": "t", "sha256": "x"})
        first = sorted(kv.index_to_key)[:n_first]
        expected = np.mean([kv[k].astype(np.float64) for k in first], axis=0)
        np.testing.assert_allclose(w.unknown_vector, expected, rtol=1e-6)
        assert w.unknown_vector is w.unknown_vector  # computed once


def test_all_oov_empty_and_huge_captions(wv):
    for cap in ("", "zzz qqq", "!!! ...", "the of and"):
        mat, mask = wv.encode(cap)
        assert mask.tolist() == [1.0] + [0.0] * (MAX_WORDS - 1)
        np.testing.assert_array_equal(mat[0], wv.unknown_vector)
        assert not mat[1:].any() and np.isfinite(mat).all()
    rng = random.Random(2)
    huge = " ".join(rng.choice(WORDS + ["zzz"]) for _ in range(2000))
    assert wv.lookup(huge).shape[0] == len(wv.tokens(huge)) > 1000
    mat, mask = wv.encode(huge)
    np.testing.assert_array_equal(mat, wv.lookup(huge)[:MAX_WORDS])
    assert mask.sum() == MAX_WORDS


def test_encode_truncates_and_pads(wv):
    rng = random.Random(3)
    for _ in range(200):
        cap = random_caption(rng)
        max_words = rng.randint(1, 12)
        mat, mask = wv.encode(cap, max_words)
        rows = wv.lookup(cap)[:max_words]
        n = len(rows)
        assert mat.shape == (max_words, DIM) and mask.shape == (max_words,)
        assert mat.dtype == np.float32 and mask.dtype == np.float32
        np.testing.assert_array_equal(mat[:n], rows)
        assert not mat[n:].any()
        assert mask.tolist() == [1.0] * n + [0.0] * (max_words - n)
    with pytest.raises(InputError):
        wv.encode("dog", 0)


def test_encode_many_stacks_encode(wv):
    rng = random.Random(4)
    caps = [random_caption(rng) for _ in range(25)]
    mats, masks = wv.encode_many(iter(caps), 7)
    assert mats.shape == (25, 7, DIM) and masks.shape == (25, 7)
    for i, cap in enumerate(caps):
        m, k = wv.encode(cap, 7)
        np.testing.assert_array_equal(mats[i], m)
        np.testing.assert_array_equal(masks[i], k)
    empty_m, empty_k = wv.encode_many([], 5)
    assert empty_m.shape == (0, 5, DIM) and empty_k.shape == (0, 5)
    with pytest.raises(InputError, match="caption 1"):
        wv.encode_many(["dog", None], 5)  # type: ignore[list-item]


# --- files -------------------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("compress", ["none", "gz", "gz_no_suffix"])
def test_load_word2vec_files(tmp_path, binary, compress):
    kv = make_kv(seed=5)
    path = write_w2v(tmp_path / "v.raw", kv, binary)
    if compress != "none":
        data = gzip.compress(path.read_bytes())
        path = tmp_path / ("v.bin.gz" if compress == "gz" else "v.dat")
        path.write_bytes(data)
    w = load_word_vectors(str(path))
    assert w.kv.index_to_key == kv.index_to_key
    np.testing.assert_allclose(w.kv.vectors, kv.vectors, rtol=1e-6 if not binary else 0)
    assert w.dim == DIM and len(w) == len(WORDS)
    assert w.identity == {
        "source": str(path.resolve()),
        "sha256": sha256_file(path),
        "limit": None,
        "vocab_size": len(WORDS),
        "dim": DIM,
    }


def test_binary_detected_from_content_not_name(tmp_path):
    kv = make_kv(seed=6)
    b = write_w2v(tmp_path / "looks_like.txt", kv, binary=True)
    t = write_w2v(tmp_path / "looks_like.bin", kv, binary=False)
    np.testing.assert_array_equal(load_word_vectors(str(b)).kv.vectors, kv.vectors)
    np.testing.assert_allclose(load_word_vectors(str(t)).kv.vectors, kv.vectors, rtol=1e-6)


def test_limit_and_sha256(tmp_path):
    kv = make_kv(seed=7)
    path = write_w2v(tmp_path / "v.bin", kv, binary=True)
    w = load_word_vectors(str(path), limit=4)
    assert w.kv.index_to_key == WORDS[:4] and w.identity["limit"] == 4
    good = sha256_file(path)
    assert load_word_vectors(str(path), sha256=good.upper()).identity["sha256"] == good
    with pytest.raises(WordVectorsError, match="sha256 mismatch"):
        load_word_vectors(str(path), sha256="0" * 64)
    with pytest.raises(WordVectorsError, match="limit"):
        load_word_vectors(str(path), limit=0)


def test_bad_files_raise_word_vectors_error_naming_the_file(tmp_path):
    rng = np.random.default_rng(8)
    cases = {
        "random.bin": rng.bytes(5000),
        "doc.json": json.dumps({"a": 1}).encode(),
        "table.csv": b"word,x,y\ndog,1,2\n",
        "empty.bin": b"",
        "header_only.txt": b"3 4",
        "bad_dim.txt": b"3 0\n",
    }
    kv = make_kv(seed=9)
    full = write_w2v(tmp_path / "full.bin", kv, binary=True).read_bytes()
    cases["truncated.bin"] = full[: len(full) // 2]
    text_full = write_w2v(tmp_path / "full.txt", kv, binary=False).read_bytes()
    lines = text_full.split(b"\n")
    lines[3] += b" 1.0"
    cases["long_row.txt"] = b"\n".join(lines)
    cases["truncated.txt"] = text_full[: len(text_full) // 2]
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(WordVectorsError, match=re.escape(name)):
            load_word_vectors(str(path))
    with pytest.raises(WordVectorsError, match="nope.bin"):
        load_word_vectors(str(tmp_path / "nope.bin"))
    with pytest.raises(WordVectorsError, match="train_word_vectors"):
        load_word_vectors("train:300")


def test_http_source_is_fetched_and_cached(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    kv = make_kv(seed=10)
    raw = write_w2v(tmp_path / "GoogleNews-tiny.bin", kv, binary=True)
    path = served / "GoogleNews-tiny.bin.gz"
    path.write_bytes(gzip.compress(raw.read_bytes()))
    handler = functools.partial(QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/GoogleNews-tiny.bin.gz"
        cache = tmp_path / "cache"
        w = load_word_vectors(url, sha256=sha256_file(path), cache_dir=cache)
        np.testing.assert_array_equal(w.kv.vectors, kv.vectors)
        assert w.identity["source"] == url and w.identity["sha256"] == sha256_file(path)
        assert len(list(cache.rglob("*.bin.gz"))) == 1
        path.unlink()  # the cached copy is used from now on
        assert load_word_vectors(url, cache_dir=cache).kv.index_to_key == kv.index_to_key
    finally:
        server.shutdown()
        server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


# --- trained fallback vectors ---------------------------------------------------------------------

CORPUS = [
    "A dog barks at the car.",
    "Rain falls on a metal roof while a car passes by",
    "Birds sing; water flows in a stream.",
    "The engine of the car starts and idles",
    "It's raining, and a dog barks loudly!",
] * 4


def test_train_word_vectors_is_deterministic_and_lowercase():
    a = train_word_vectors(CORPUS, dim=8, seed=3)
    b = train_word_vectors(iter(CORPUS), dim=8, seed=3)
    c = train_word_vectors(CORPUS, dim=8, seed=4)
    np.testing.assert_array_equal(a.kv.vectors, b.kv.vectors)
    assert a.kv.index_to_key == b.kv.index_to_key
    assert not np.array_equal(a.kv.vectors, c.kv.vectors)
    expected_vocab = {w.lower() for cap in CORPUS for w in tokenize(cap)}
    assert set(a.kv.index_to_key) == expected_vocab
    assert a.dim == 8 and a.identity["sha256"] == "trained" and a.identity["source"] == "train:8"
    assert a.identity["content_sha256"] == content_sha256(a.kv)
    # capitalised words in new captions resolve to the lower-case trained keys
    assert a.tokens("DOG Barks RAIN zzz") == ["dog", "barks", "rain"]


def test_train_word_vectors_is_deterministic_across_hash_seeds(tmp_path):
    script = (
        "from atr_core.text.word_vectors import train_word_vectors\n"
        f"print(train_word_vectors({CORPUS!r}, dim=5, seed=1).identity['content_sha256'])\n"
    )
    outs = set()
    for hash_seed in ("1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": "1"}
        res = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        )
        outs.add(res.stdout.strip())
    assert len(outs) == 1 and len(next(iter(outs))) == 64


def test_train_word_vectors_errors():
    with pytest.raises(WordVectorsError, match="no word tokens"):
        train_word_vectors(["", "!!!"], dim=4)
    with pytest.raises(WordVectorsError):
        train_word_vectors(CORPUS, dim=0)


def test_save_load_round_trip(tmp_path):
    a = train_word_vectors(CORPUS, dim=8, seed=0)
    a.save(tmp_path / "wv")
    b = WordVectors.load(tmp_path / "wv")
    assert b.identity == a.identity
    np.testing.assert_array_equal(a.kv.vectors, b.kv.vectors)
    np.testing.assert_array_equal(a.unknown_vector, b.unknown_vector)
    for cap in CORPUS:
        np.testing.assert_array_equal(a.encode(cap)[0], b.encode(cap)[0])
    assert sorted(os.listdir(tmp_path / "wv")) == ["identity.json", "vectors.bin"]
    # pretrained vectors round-trip too
    p = WordVectors(make_kv(seed=11), {"source": "/x/v.bin", "sha256": "ab", "limit": None})
    p.save(tmp_path / "p")
    assert WordVectors.load(tmp_path / "p").identity == p.identity


def test_load_checks_the_saved_identity(tmp_path):
    a = train_word_vectors(CORPUS, dim=4, seed=0)
    a.save(tmp_path / "wv")
    meta_path = tmp_path / "wv" / "identity.json"
    meta = json.loads(meta_path.read_text())
    for key, value in (("content_sha256", "0" * 64), ("vocab_size", 3), ("dim", 7)):
        bad = json.loads(json.dumps(meta))
        bad["identity"][key] = value
        meta_path.write_text(json.dumps(bad))
        with pytest.raises(WordVectorsError, match=key):
            WordVectors.load(tmp_path / "wv")
    meta_path.write_text(json.dumps({**meta, "schema_version": 99}))
    with pytest.raises(SchemaError, match="schema_version 99"):
        WordVectors.load(tmp_path / "wv")
    with pytest.raises(WordVectorsError, match="missing"):
        WordVectors.load(tmp_path / "nothing")


def test_fallback_vectors_trained_on_real_captions_are_informative(real_corpus):
    """train:DIM on a few hundred real captions: words are spread out (not nearly parallel, as
    gensim's CBOW defaults left them) and a sound's two names end up close."""
    from atr_core.formats.manifest import read_manifest
    from atr_core.training.loop import mean_pairwise_cosine

    captions = [c for e in read_manifest(str(real_corpus / "clotho_captions_development.csv"))
                for c in e.captions]
    wv = train_word_vectors(captions, dim=100, seed=0)
    vectors = torch.from_numpy(np.asarray(wv.kv.vectors))
    assert mean_pairwise_cosine(vectors) < 0.6
    assert wv.identity["algorithm"] == "skip-gram" and wv.identity["epochs"] >= 30
    # synonyms (the corpus names one sound two ways) end up closer than a word is to words at large
    from atr_core.corpus.catalogue import SOUNDS

    pairs = {(s.subjects[0].split()[-1], s.subjects[1].split()[-1]) for s in SOUNDS if len(s.subjects) > 1}
    pairs = [(a, b) for a, b in pairs if a != b and a in wv.kv.key_to_index and b in wv.kv.key_to_index]
    assert len(pairs) >= 10
    gaps = [wv.kv.similarity(a, b) - float(np.mean(wv.kv.cosine_similarities(wv.kv[a], wv.kv.vectors)))
            for a, b in pairs]
    assert np.mean(gaps) > 0.2 and np.mean(np.array(gaps) > 0) > 0.8

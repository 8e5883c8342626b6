"""Search indexes: exact top-k against brute force, the ANN index against exact search."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from atr_core.errors import ConfigMismatchError, QueryError
from atr_core.search.searcher import (
    AnnIndex,
    AnnSpec,
    AnnUnavailableError,
    ExactIndex,
    default_nlist,
    normalize_rows,
    recall_at_k,
    require_faiss,
    top_k,
)


def _brute_top_k(scores: np.ndarray, k: int) -> np.ndarray:
    # Stable sort on -score keeps column order among ties.
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def test_top_k_matches_stable_sort_over_random_cases_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(300):
        q, n = int(rng.integers(1, 5)), int(rng.integers(1, 60))
        k = int(rng.integers(0, n + 3))
        levels = int(rng.integers(1, 6))  # few distinct values -> many ties
        scores = rng.integers(0, levels, size=(q, n)).astype(np.float32)
        if rng.random() < 0.5:
            scores += rng.standard_normal((q, n)).astype(np.float32)
        idx, got = top_k(scores, k)
        want = _brute_top_k(scores, min(k, n))
        np.testing.assert_array_equal(idx, want)
        np.testing.assert_array_equal(got, np.take_along_axis(scores, want, axis=1))


def test_exact_index_is_cosine_brute_force():
    rng = np.random.default_rng(1)
    for _ in range(50):
        n, dim, k = int(rng.integers(1, 80)), int(rng.integers(1, 12)), int(rng.integers(1, 15))
        base = rng.standard_normal((n, dim)).astype(np.float32) * rng.uniform(0.1, 10)
        queries = rng.standard_normal((3, dim)).astype(np.float32)
        scores, idx = ExactIndex(base).search(queries, k)
        cos = normalize_rows(queries) @ normalize_rows(base).T
        np.testing.assert_array_equal(idx, _brute_top_k(cos, min(k, n)))
        np.testing.assert_allclose(scores, np.take_along_axis(cos, idx, axis=1), atol=1e-6)
        assert np.all(np.diff(scores, axis=1) <= 0)
        assert np.all(np.abs(scores) <= 1 + 1e-5)


def test_exact_index_single_query_and_dimension_check():
    base = np.eye(3, dtype=np.float32)
    scores, idx = ExactIndex(base).search(np.array([0.0, 2.0, 0.0]), k=1)
    assert idx.tolist() == [[1]] and scores[0, 0] == pytest.approx(1.0)
    with pytest.raises(QueryError, match="dimension 2"):
        ExactIndex(base).search(np.ones(2), k=1)


def test_recall_at_k():
    assert recall_at_k(np.array([[1, 2, 3]]), np.array([[3, 2, 1]])) == 1.0
    assert recall_at_k(np.array([[1, 2], [3, 4]]), np.array([[1, 9], [-1, -1]])) == pytest.approx(0.25)
    assert recall_at_k(np.array([[1, 2, 3]]), np.array([[1, 2, 4]]), k=2) == 1.0


def _clustered(rng: np.random.Generator, n: int, dim: int, centers: int) -> np.ndarray:
    c = rng.standard_normal((centers, dim)).astype(np.float32)
    x = c[rng.integers(0, centers, n)] + 0.3 * rng.standard_normal((n, dim)).astype(np.float32)
    return normalize_rows(x)


def test_ann_flat_equals_exact_and_ivf_full_probe_equals_exact(tmp_path):
    rng = np.random.default_rng(2)
    base = _clustered(rng, 3000, 16, 20)
    queries = _clustered(rng, 40, 16, 20)
    _, exact = ExactIndex(base).search(queries, 10)
    _, flat = AnnIndex.build(base, AnnSpec(factory="auto")).search(queries, 10)  # < 4096 -> Flat
    assert recall_at_k(exact, flat) == 1.0
    ivf = AnnIndex.build(base, AnnSpec(factory="IVF16,Flat", nprobe=16))
    assert recall_at_k(exact, ivf.search(queries, 10)[1]) == 1.0
    few = AnnIndex.build(base, AnnSpec(factory="IVF16,Flat", nprobe=1))
    r = recall_at_k(exact, few.search(queries, 10)[1])
    assert 0.3 < r <= 1.0
    path = str(tmp_path / "ann.faiss")
    ivf = AnnIndex.build(base, AnnSpec(factory="IVF16,Flat", nprobe=16), fingerprint="fp1")
    ivf.save(path)
    back = AnnIndex.load(path, expected_fingerprint="fp1")
    assert len(back) == 3000 and back.spec.nprobe == 16
    np.testing.assert_array_equal(back.search(queries, 10)[1], ivf.search(queries, 10)[1])
    with pytest.raises(ConfigMismatchError, match="rebuild"):
        AnnIndex.load(path, expected_fingerprint="other")


def test_default_nlist_is_a_power_of_two_near_sqrt_n():
    for n in [1, 10, 5000, 100_000, 1_000_000, 10**10]:
        nl = default_nlist(n)
        assert nl & (nl - 1) == 0 and 1 <= nl <= 65536
        if 1000 < n < 10**9:
            assert np.sqrt(n) / 2 <= nl <= 2 * np.sqrt(n)
    assert AnnSpec().resolved_factory(1_000_000) == "IVF1024,Flat"


def test_missing_faiss_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(AnnUnavailableError, match=r"pip install 'atr\[ann\]'"):
        require_faiss()
    with pytest.raises(AnnUnavailableError):
        AnnIndex.build(np.eye(4, dtype=np.float32))


# ----------------------------------------------------------------------------- the Searcher API and CLI


def _write_direct_vectors(model_dir, corpus, out_dir, splits=("val", "test")):
    """Vectors computed straight through the model, written with the vectors writer (no pipeline)."""
    from atr_core.formats.vectors import (
        VectorsIdentity,
        model_identity,
        vectors_schema,
        vectors_table,
        write_vectors_file,
    )
    from atr_core.model.directory import read_config
    from tests.test_embed import direct_vectors

    config, meta = read_config(model_dir)
    schema = vectors_schema(VectorsIdentity(config.embed_dim, model_identity(config, meta, "m")))
    for split in splits:
        audio, text = direct_vectors(model_dir, corpus, split)
        a_ids = sorted(audio)
        write_vectors_file(
            str(out_dir / split / "audio.parquet"),
            vectors_table(
                schema, ids=a_ids, kind="audio", vectors=np.stack([audio[a] for a in a_ids]), split=split
            ),
        )
        c_ids = sorted(text)
        aud = [c.rsplit("#", 1)[0] for c in c_ids]
        caps = [corpus.entries[split][a][int(c.rsplit("#", 1)[1])] for a, c in zip(aud, c_ids, strict=True)]
        write_vectors_file(
            str(out_dir / split / "captions.parquet"),
            vectors_table(
                schema,
                ids=c_ids,
                kind="caption",
                vectors=np.stack([text[c] for c in c_ids]),
                split=split,
                audio_ids=aud,
                captions=caps,
            ),
        )
    return out_dir


@pytest.fixture(scope="module")
def search_corpus(tmp_path_factory):
    from tests.test_embed import make_corpus

    root = tmp_path_factory.mktemp("search")
    c = make_corpus(root, seed=5, n_models=2)
    vec_dir = _write_direct_vectors(c.models[0], c, root / "vectors")
    return c, vec_dir


def test_search_text_equals_brute_force(search_corpus):
    from atr_core.formats.vectors import read_vectors
    from atr_core.search.searcher import Searcher

    c, vec_dir = search_corpus
    s = Searcher.from_dirs(str(vec_dir), str(c.models[0]))
    audio = read_vectors(str(vec_dir), kind="audio")
    rng = np.random.default_rng(0)
    from tests.test_embed import WORDS

    for _ in range(20):
        query = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 6))))
        k = int(rng.integers(1, 20))
        hits = s.search_text(query, k)
        q = s.embed_text(query)
        want = _brute_top_k((audio.vectors @ q)[None], min(k, len(audio)))[0]
        assert [h.id for h in hits] == [audio.ids[i] for i in want]
        assert [h.rank for h in hits] == list(range(1, len(want) + 1))
        np.testing.assert_allclose([h.score for h in hits], (audio.vectors @ q)[want], atol=1e-6)
    only_test = Searcher.from_dirs(str(vec_dir), str(c.models[0]), splits=["test"])
    assert {h.split for h in only_test.search_text("dog", 100)} == {"test"}
    assert len(only_test.search_text("dog", 100)) == len(only_test.audio)


@pytest.mark.parametrize("query", ["", "   ", "zzzq xxyq", "!!! ???"])
def test_empty_or_out_of_vocabulary_query_is_a_query_error(search_corpus, query):
    from atr_core.search.searcher import Searcher

    c, vec_dir = search_corpus
    s = Searcher.from_dirs(str(vec_dir), str(c.models[0]))
    with pytest.raises(QueryError):
        s.search_text(query)
    with pytest.raises(QueryError, match="k must be"):
        s.search_text("dog", 0)


def test_vectors_of_another_model_are_refused(search_corpus):
    from atr_core.search.searcher import Searcher

    c, vec_dir = search_corpus
    with pytest.raises(ConfigMismatchError, match="another model"):
        Searcher.from_dirs(str(vec_dir), str(c.models[1]))


def test_searcher_ann_index_is_saved_and_matches_exact(search_corpus, tmp_path):
    import shutil

    from atr_core.search.searcher import Searcher

    c, vec_dir = search_corpus
    local = tmp_path / "v"
    shutil.copytree(vec_dir, local)
    exact = Searcher.from_dirs(str(local), str(c.models[0]))
    ann = Searcher.from_dirs(str(local), str(c.models[0]), ann=AnnSpec(factory="Flat"))
    for q in ["dog barks", "rain falls loud", "bird"]:
        assert [h.id for h in ann.search_text(q, 5)] == [h.id for h in exact.search_text(q, 5)]
    assert (local / "ann-audio.faiss").is_file() and (local / "ann-audio.faiss.json").is_file()
    again = Searcher.from_dirs(str(local), str(c.models[0]), ann=AnnSpec(factory="Flat"))
    assert [h.id for h in again.search_text("dog", 3)] == [h.id for h in exact.search_text("dog", 3)]
    # A split filter changes the vector set: the saved index is stale and is rebuilt, not trusted.
    only = Searcher.from_dirs(str(local), str(c.models[0]), splits=["val"], ann=AnnSpec(factory="Flat"))
    exact_val = Searcher.from_dirs(str(local), str(c.models[0]), splits=["val"])
    assert [h.id for h in only.search_text("dog", 50)] == [h.id for h in exact_val.search_text("dog", 50)]
    assert {h.split for h in only.search_text("dog", 50)} == {"val"}


def test_search_audio_with_lms_features(tmp_path):
    from atr_core.audio.features import build_feature_model
    from atr_core.audio.windows import extract_clip
    from atr_core.formats.vectors import read_vectors
    from atr_core.search.searcher import Searcher, encode_segments
    from tests.audio_fixtures import write_audio
    from tests.test_embed import make_corpus, make_model

    c = make_corpus(tmp_path, seed=7)
    lms_model = make_model(
        tmp_path / "lms_model", 1, ["dog barks", "rain falls"], feature="lms", audio_dim=64
    )
    # Captions embedded by the lms model (audio vectors are not needed for audio -> text).
    c.clips = {a: np.zeros((2, 64), np.float16) for a in c.clips}
    vec_dir = _write_direct_vectors_lms(lms_model, c, tmp_path / "vec")
    wav = write_audio(tmp_path / "q.wav", 1.5, sr=22050, kind="tone", freq=660.0)
    s = Searcher.from_dirs(str(vec_dir), str(lms_model))
    hits = s.search_audio(str(wav), k=4)
    caps = read_vectors(str(vec_dir), kind="caption")
    from atr_core.audio.decode import decode_audio, pad_to_minimum

    wave, _ = pad_to_minimum(decode_audio(str(wav)).waveform)
    seg = extract_clip(build_feature_model("lms", None), wave)
    q = encode_segments(s.model, [seg], s.config.max_segments)[0]
    want = _brute_top_k((caps.vectors @ q)[None], 4)[0]
    assert [h.id for h in hits] == [caps.ids[i] for i in want]
    assert all(h.caption for h in hits)
    with pytest.raises(QueryError, match="no such audio file"):
        s.search_audio(str(tmp_path / "missing.wav"))


def _write_direct_vectors_lms(model_dir, corpus, out_dir):
    import torch

    from atr_core.formats.vectors import (
        VectorsIdentity,
        model_identity,
        vectors_schema,
        vectors_table,
        write_vectors_file,
    )
    from atr_core.model.directory import load_model, read_config
    from atr_core.search.searcher import encode_captions

    config, meta = read_config(model_dir)
    model, _, wv = load_model(model_dir)
    schema = vectors_schema(VectorsIdentity(config.embed_dim, model_identity(config, meta)))
    ids, aud, caps = [], [], []
    for aid, cs in corpus.entries["test"].items():
        for i, cap in enumerate(cs):
            ids.append(f"{aid}#{i}")
            aud.append(aid)
            caps.append(cap)
    with torch.no_grad():
        vecs = encode_captions(model, wv, caps, config.max_words)
    write_vectors_file(
        str(out_dir / "captions.parquet"),
        vectors_table(
            schema, ids=ids, kind="caption", vectors=vecs, split="test", audio_ids=aud, captions=caps
        ),
    )
    return out_dir


def test_cli_prints_results_json_and_fails_cleanly(search_corpus, capsys):
    import json
    import subprocess

    from pipelines import search as cli

    c, vec_dir = search_corpus
    hits = cli.main(["--vectors", str(vec_dir), "--model", str(c.models[0]), "--k", "3", "dog barks"])
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 3 and len(hits) == 3 and hits[0].audio_id in out[0]
    cli.main(["--vectors", str(vec_dir), "--model", str(c.models[0]), "--json", "--k", "2", "rain"])
    data = json.loads(capsys.readouterr().out)
    assert data["mode"] == "text" and data["index"] == "exact" and len(data["results"]) == 2
    assert data["results"][0]["rank"] == 1 and data["results"][0]["score"] >= data["results"][1]["score"]
    for query in ["", "qqqzzz"]:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pipelines.search",
                "--vectors",
                str(vec_dir),
                "--model",
                str(c.models[0]),
                query,
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 2, proc.stderr
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("search: error:")]
        assert len(lines) == 1 and ("empty query" in lines[0] or "vocabulary" in lines[0])
        assert "Traceback" not in proc.stderr
    assert cli.format_hits([], "text") == "(no results)"

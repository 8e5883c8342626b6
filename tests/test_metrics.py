"""Tests for atr_core.evaluation.metrics against a brute-force loop reference (reference.md section 8)."""

from __future__ import annotations

import statistics

import numpy as np
import pytest

from atr_core.errors import AtrError, InputError
from atr_core.evaluation import metrics as M

# --------------------------------------------------------------------------- reference


def ref_rank(candidates: np.ndarray, target: int) -> float:
    """Authors' definition: distances d = -s sorted ascending (stable); the mean of the positions
    whose distance equals the target's exactly."""
    d = -np.asarray(candidates)
    order = np.argsort(d, kind="stable")
    positions = [pos for pos, idx in enumerate(order) if d[idx] == d[target]]
    return sum(positions) / len(positions)


def ref_rank_by_counting(candidates: np.ndarray, target: int) -> float:
    """#strictly better + (#tied - 1) / 2, by plain loops."""
    better = sum(1 for v in candidates if v > candidates[target])
    tied = sum(1 for v in candidates if v == candidates[target])
    return better + (tied - 1) / 2


def ref_ranks(sims: np.ndarray, c2c: np.ndarray) -> dict[str, np.ndarray]:
    n_captions, n_clips = sims.shape
    t2a = np.array([ref_rank(sims[r], int(c2c[r])) for r in range(n_captions)])
    per_caption = np.array([ref_rank(sims[:, int(c2c[r])], r) for r in range(n_captions)])
    clips, a2t = [], []
    for j in range(n_clips):
        own = [r for r in range(n_captions) if c2c[r] == j]
        if own:
            clips.append(j)
            a2t.append(min(per_caption[r] for r in own))
    return {"t2a": t2a, "a2t": np.array(a2t), "a2t_clips": np.array(clips), "a2t_per_caption": per_caption}


def ref_summary(ranks: np.ndarray) -> dict[str, float]:
    values = [float(x) for x in ranks]
    m = len(values)
    out = {
        "R1": 100 * sum(1 for v in values if v == 0) / m,
        "R5": 100 * sum(1 for v in values if v < 5) / m,
        "R10": 100 * sum(1 for v in values if v < 10) / m,
        "R50": 100 * sum(1 for v in values if v < 50) / m,
        "MedR": statistics.median(values) + 1,
        "MeanR": statistics.fmean(values) + 1,
        "num_queries": m,
    }
    out["geometric_mean"] = (out["R1"] * out["R5"] * out["R10"]) ** (1 / 3)
    return out


# --------------------------------------------------------------------------- random cases


def random_assignment(rng: np.random.Generator, n_clips: int, max_caps: int = 4) -> np.ndarray:
    """caption -> clip with 0..max_caps captions per clip (at least one caption overall), shuffled."""
    counts = rng.integers(0, max_caps + 1, size=n_clips)
    if counts.sum() == 0:
        counts[rng.integers(n_clips)] = 1
    c2c = np.repeat(np.arange(n_clips), counts)
    if rng.random() < 0.5:
        c2c = rng.permutation(c2c)
    return c2c.astype(np.int64)


def random_sims(rng: np.random.Generator, n_captions: int, n_clips: int) -> np.ndarray:
    """Continuous values, or a handful of levels (many exact ties), or duplicated rows/columns."""
    mode = rng.integers(3)
    if mode == 0:
        return rng.standard_normal((n_captions, n_clips)).astype(np.float32)
    if mode == 1:
        return (rng.integers(-3, 4, size=(n_captions, n_clips)) / 4).astype(np.float32)
    base = rng.standard_normal((n_captions, n_clips)).astype(np.float32)
    rows = rng.integers(0, n_captions, size=n_captions)
    cols = rng.integers(0, n_clips, size=n_clips)
    return np.ascontiguousarray(base[rows][:, cols])


def random_embeddings(
    rng: np.random.Generator, n_captions: int, n_clips: int, dim: int, quantised: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Quantised: entries k/4, |k| <= 3, dim <= 16, so every float32 dot product is exact whatever the
    summation order; some rows duplicated in both modes."""
    if quantised:
        t = (rng.integers(-3, 4, size=(n_captions, dim)) / 4).astype(np.float32)
        a = (rng.integers(-3, 4, size=(n_clips, dim)) / 4).astype(np.float32)
    else:
        t = rng.standard_normal((n_captions, dim)).astype(np.float32)
        a = rng.standard_normal((n_clips, dim)).astype(np.float32)
        t /= np.linalg.norm(t, axis=1, keepdims=True)
        a /= np.linalg.norm(a, axis=1, keepdims=True)
    if rng.random() < 0.5 and n_captions > 1:
        src = rng.integers(0, n_captions, size=n_captions // 3 + 1)
        dst = rng.integers(0, n_captions, size=src.size)
        t[dst] = t[src]
    if rng.random() < 0.5 and n_clips > 1:
        a[rng.integers(0, n_clips)] = a[rng.integers(0, n_clips)]
    return t, a


def assert_ranks_equal(got: dict[str, np.ndarray], want: dict[str, np.ndarray], keys=None) -> None:
    for key in keys or ("t2a", "a2t", "a2t_clips"):
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


# --------------------------------------------------------------------------- reference self-check


def test_reference_definitions_agree():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 15))
        values = (rng.integers(-2, 3, size=n) / 2).astype(np.float32)
        target = int(rng.integers(n))
        assert ref_rank(values, target) == ref_rank_by_counting(values, target)


# --------------------------------------------------------------------------- full matrix


@pytest.mark.parametrize("seed", range(6))
def test_rank_vectors_match_bruteforce(seed):
    rng = np.random.default_rng(seed)
    for _ in range(60):
        n_clips = int(rng.integers(1, 10))
        c2c = random_assignment(rng, n_clips)
        sims = random_sims(rng, len(c2c), n_clips)
        got = M.rank_vectors(sims, c2c, per_caption=True)
        assert_ranks_equal(got, ref_ranks(sims, c2c), ("t2a", "a2t", "a2t_clips", "a2t_per_caption"))


def test_retrieval_metrics_match_reference_summary():
    rng = np.random.default_rng(11)
    for _ in range(100):
        n_clips = int(rng.integers(1, 70))
        c2c = random_assignment(rng, n_clips, max_caps=5)
        sims = random_sims(rng, len(c2c), n_clips)
        got = M.retrieval_metrics(sims, c2c)
        ref = ref_ranks(sims, c2c)
        for direction in ("t2a", "a2t"):
            want = ref_summary(ref[direction])
            for key, value in want.items():
                assert got[direction][key] == pytest.approx(value, rel=1e-12, abs=1e-12), (direction, key)
        assert got["a2t"]["num_excluded"] == n_clips - len(np.unique(c2c))
        assert got["t2a"]["num_excluded"] == 0
        assert got["t2a"]["num_queries"] == len(c2c)


def test_metrics_are_plain_json_types():
    import json

    rng = np.random.default_rng(2)
    c2c = random_assignment(rng, 9)
    result = M.retrieval_metrics(random_sims(rng, len(c2c), 9), c2c)
    for direction in result.values():
        for key, value in direction.items():
            assert type(value) is (int if key.startswith("num_") else float), key
    assert json.loads(json.dumps(result)) == result


def test_summary_matches_reference_on_random_rank_vectors():
    rng = np.random.default_rng(3)
    for _ in range(300):
        m = int(rng.integers(1, 200))
        ranks = rng.integers(0, 120, size=m) / 2  # includes x.5 tie ranks
        got = M.summarize_ranks(ranks)
        for key, value in ref_summary(ranks).items():
            assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key


def test_r1_counts_only_exact_zero():
    # caption 0 ties for first with a wrong clip: rank 0.5, not a hit at 1 but a hit at 5.
    sims = np.array([[0.9, 0.9, 0.1], [0.1, 0.8, 0.2]], dtype=np.float32)
    c2c = np.array([0, 1])
    ranks = M.rank_vectors(sims, c2c)
    np.testing.assert_array_equal(ranks["t2a"], [0.5, 0.0])
    result = M.retrieval_metrics(sims, c2c)["t2a"]
    assert result["R1"] == 50.0
    assert result["R5"] == 100.0
    assert M.summarize_ranks([0.5])["R1"] == 0.0
    assert M.summarize_ranks([0.0])["R1"] == 100.0


def test_medr_even_count_averages_middle_values():
    assert M.summarize_ranks([0, 1, 2, 5])["MedR"] == 2.5
    assert M.summarize_ranks([0, 3])["MedR"] == 2.5
    assert M.summarize_ranks([0, 1, 2])["MedR"] == 2.0
    assert M.summarize_ranks([0.5, 4.5, 4.5, 9])["MeanR"] == pytest.approx(5.625)


def test_recall_boundaries_tie_ranks():
    s = M.summarize_ranks([4.5, 5.0, 9.5, 10.0, 49.5, 50.0])
    assert s["R5"] == pytest.approx(100 / 6)
    assert s["R10"] == pytest.approx(300 / 6)
    assert s["R50"] == pytest.approx(500 / 6)
    assert s["geometric_mean"] == 0.0


def test_variable_captions_and_excluded_clips():
    # clip 0: 3 captions, clip 1: none, clip 2: 1 caption, clip 3: 2 captions.
    c2c = np.array([0, 0, 0, 2, 3, 3])
    sims = np.array(
        [
            [0.1, 0.5, 0.2, 0.0],
            [0.7, 0.5, 0.2, 0.0],
            [0.3, 0.9, 0.2, 0.0],
            [0.1, 0.0, 0.4, 0.6],
            [0.1, 0.0, 0.4, 0.6],
            [0.8, 0.0, 0.9, 0.2],
        ],
        dtype=np.float32,
    )
    ranks = M.rank_vectors(sims, c2c, per_caption=True)
    np.testing.assert_array_equal(ranks["a2t_clips"], [0, 2, 3])
    # clip 0 column: best own is 0.7 (caption 1); 0.8 (caption 5) is above: rank 1.
    # clip 2 column: own 0.4 ties with caption 4's 0.4, below 0.9: rank 1 + 0.5.
    # clip 3 column: own 0.6, 0.6 (tied with each other), 0.2: rank 0.5.
    np.testing.assert_array_equal(ranks["a2t"], [1.0, 1.5, 0.5])
    metrics = M.retrieval_metrics(sims, c2c)
    assert metrics["a2t"]["num_queries"] == 3
    assert metrics["a2t"]["num_excluded"] == 1
    assert metrics["a2t"]["R1"] == 0.0


def test_split_with_one_clip():
    sims = np.array([[0.3], [0.3], [0.1]], dtype=np.float32)
    c2c = np.zeros(3, dtype=np.int64)
    ranks = M.rank_vectors(sims, c2c)
    np.testing.assert_array_equal(ranks["t2a"], [0, 0, 0])
    np.testing.assert_array_equal(ranks["a2t"], [0.5])  # the two best captions tie
    metrics = M.retrieval_metrics(sims, c2c)
    assert metrics["t2a"]["R1"] == 100.0 and metrics["t2a"]["MedR"] == 1.0
    assert metrics["a2t"]["R1"] == 0.0 and metrics["a2t"]["num_queries"] == 1
    # and through the blocked path from embeddings
    t = np.array([[1.0, 0.0], [1.0, 0.0], [0.5, 0.5]], dtype=np.float32)
    a = np.array([[0.5, 0.25]], dtype=np.float32)
    assert M.blocked_retrieval_metrics(t, a, c2c, block_size=2) == M.retrieval_metrics(t @ a.T, c2c)


def test_paper_layout_five_captions_audio_major():
    rng = np.random.default_rng(5)
    n_clips, q = 40, 5
    c2c = np.repeat(np.arange(n_clips), q)
    sims = rng.standard_normal((n_clips * q, n_clips)).astype(np.float32)
    sims[np.arange(n_clips * q), c2c] += 2.0  # a decent model
    got = M.retrieval_metrics(sims, c2c)
    ref = ref_ranks(sims, c2c)
    assert got["t2a"]["num_queries"] == 200 and got["a2t"]["num_queries"] == 40
    assert got["t2a"]["MedR"] == ref_summary(ref["t2a"])["MedR"]
    assert got["a2t"]["R10"] == ref_summary(ref["a2t"])["R10"]


# --------------------------------------------------------------------------- blocked and distributed


def test_blocked_equals_full_when_arithmetic_is_exact():
    """Quantised embeddings: every matmul is exact, so the blocked path must equal the full matrix
    ``text @ audio.T`` bit for bit, exact ties (duplicated vectors, few levels) included."""
    rng = np.random.default_rng(21)
    for _ in range(150):
        n_clips = int(rng.integers(1, 25))
        c2c = random_assignment(rng, n_clips, max_caps=6)
        t, a = random_embeddings(rng, len(c2c), n_clips, int(rng.integers(1, 17)), quantised=True)
        block = int(rng.integers(1, len(c2c) + 3))
        got = M.blocked_rank_vectors(t, a, c2c, block_size=block)
        assert_ranks_equal(got, M.rank_vectors(t @ a.T, c2c))
        assert M.blocked_retrieval_metrics(t, a, c2c, block_size=block) == M.retrieval_metrics(t @ a.T, c2c)


def blockwise_matrix(t: np.ndarray, a: np.ndarray, groups: list[np.ndarray]) -> np.ndarray:
    """The similarity matrix assembled from one matmul per caption group (what the pieces see)."""
    sims = np.empty((t.shape[0], a.shape[0]), dtype=np.float32)
    for g in groups:
        sims[g] = np.ascontiguousarray(t[g]) @ a.T
    return sims


def test_blocked_equals_full_matrix_of_the_same_products_continuous():
    """Continuous unit vectors (with duplicates): equal to the full-matrix function applied to the
    matrix made of the same block products."""
    rng = np.random.default_rng(22)
    for _ in range(120):
        n_clips = int(rng.integers(1, 30))
        c2c = random_assignment(rng, n_clips, max_caps=6)
        n = len(c2c)
        t, a = random_embeddings(rng, n, n_clips, int(rng.integers(2, 48)), quantised=False)
        block = int(rng.integers(1, n + 3))
        groups = [np.arange(i, min(i + block, n)) for i in range(0, n, block)]
        got = M.blocked_rank_vectors(t, a, c2c, block_size=block)
        assert_ranks_equal(got, M.rank_vectors(blockwise_matrix(t, a, groups), c2c))


def run_distributed(t, a, c2c, groups, rng, window_ulps=M.DEFAULT_WINDOW_ULPS):
    """What a pipeline does: pieces per caption partition, merged in a random order."""
    summaries = [M.own_score_summary(t[g], a, c2c[g]) for g in groups]
    order = rng.permutation(len(groups))
    merged = M.OwnScoreSummary.merge_all(summaries[i] for i in order)
    window = M.a2t_window(merged, a, window_ulps=window_ulps)
    t2a = np.full(len(c2c), np.nan)
    parts = []
    for g in groups:
        ranks, part = M.score_block(t[g], a, c2c[g], window)
        t2a[g] = ranks
        parts.append(part)
    order = rng.permutation(len(groups))
    a2t, clips = M.a2t_ranks_from_counts(M.A2TCounts.merge_all(parts[i] for i in order), window)
    return {"t2a": t2a, "a2t": a2t, "a2t_clips": clips}


def random_partition(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    k = int(rng.integers(1, min(n, 6) + 1))
    labels = rng.integers(0, k, size=n)
    labels[rng.permutation(n)[:k]] = np.arange(k)  # no empty partition
    return [np.flatnonzero(labels == i) for i in range(k)]


@pytest.mark.parametrize("quantised", [True, False])
def test_random_partitions_merge_to_full_matrix_metrics(quantised):
    rng = np.random.default_rng(23 + quantised)
    for _ in range(120):
        n_clips = int(rng.integers(1, 30))
        c2c = random_assignment(rng, n_clips, max_caps=6)
        n = len(c2c)
        t, a = random_embeddings(rng, n, n_clips, int(rng.integers(1, 17 if quantised else 48)), quantised)
        groups = random_partition(rng, n)
        got = run_distributed(t, a, c2c, groups, rng)
        full = t @ a.T if quantised else blockwise_matrix(t, a, groups)
        assert_ranks_equal(got, M.rank_vectors(full, c2c))
        assert M.metrics_from_ranks(got, n_clips) == M.retrieval_metrics(full, c2c)


def test_block_functions_agree_with_score_block():
    rng = np.random.default_rng(31)
    c2c = random_assignment(rng, 12, max_caps=5)
    t, a = random_embeddings(rng, len(c2c), 12, 8, quantised=True)
    window = M.a2t_window(M.own_score_summary(t, a, c2c), a)
    ranks, counts = M.score_block(t[:7], a, c2c[:7], window)
    np.testing.assert_array_equal(M.t2a_ranks_for_block(t[:7], a, c2c[:7]), ranks)
    np.testing.assert_array_equal(M.rank_vectors(t @ a.T, c2c)["t2a"][:7], ranks)
    other = M.a2t_counts_for_block(t[:7], a, c2c[:7], window)
    np.testing.assert_array_equal(other.above, counts.above)
    np.testing.assert_array_equal(other.window_score, counts.window_score)


def test_a2t_uses_the_best_own_caption():
    """Property: min over own captions of their ranks == rank of the best own score."""
    rng = np.random.default_rng(41)
    for _ in range(200):
        n_clips = int(rng.integers(1, 12))
        c2c = random_assignment(rng, n_clips)
        sims = random_sims(rng, len(c2c), n_clips)
        ranks = M.rank_vectors(sims, c2c, per_caption=True)
        per_clip = [ranks["a2t_per_caption"][c2c == j].min() for j in ranks["a2t_clips"]]
        np.testing.assert_array_equal(ranks["a2t"], per_clip)


def test_window_violation_and_missing_partition_are_detected():
    rng = np.random.default_rng(51)
    c2c = np.repeat(np.arange(6), 3)
    t, a = random_embeddings(rng, 18, 6, 8, quantised=False)
    summary = M.own_score_summary(t, a, c2c)
    shifted = M.OwnScoreSummary(summary.best + 0.5, summary.text_norm, summary.num_captions)
    bad_window = M.a2t_window(shifted, a)
    _, counts = M.score_block(t, a, c2c, bad_window)
    with pytest.raises(AtrError, match="outside its a2t window"):
        M.a2t_ranks_from_counts(counts, bad_window)
    window = M.a2t_window(summary, a)
    _, half = M.score_block(t[:9], a, c2c[:9], window)
    with pytest.raises(AtrError, match="cover 9 captions, expected 18"):
        M.a2t_ranks_from_counts(half, window)


def test_blocked_accepts_lazy_and_float16_inputs():
    rng = np.random.default_rng(61)
    c2c = random_assignment(rng, 15, max_caps=5)
    t, a = random_embeddings(rng, len(c2c), 15, 12, quantised=True)  # k/4 is exact in float16 too

    class Lazy:
        shape = t.shape

        def __getitem__(self, item):
            return t[item].astype(np.float16)

    want = M.rank_vectors(t @ a.T, c2c)
    assert_ranks_equal(M.blocked_rank_vectors(Lazy(), a.astype(np.float16), c2c, block_size=4), want)


def test_blocked_block_size_and_window_chunking_do_not_change_exact_results(monkeypatch):
    rng = np.random.default_rng(71)
    c2c = random_assignment(rng, 20, max_caps=5)
    t, a = random_embeddings(rng, len(c2c), 20, 16, quantised=True)
    want = M.retrieval_metrics(t @ a.T, c2c)
    results = [M.blocked_retrieval_metrics(t, a, c2c, block_size=b) for b in (None, 1, 2, 7, 64, 10_000)]
    assert all(r == want for r in results)
    monkeypatch.setattr(M, "_WINDOW_COLS", 3)  # many ties: windows hold many scores in many columns
    assert M.blocked_retrieval_metrics(t, a, c2c, block_size=5) == want


def test_auto_block_size_bounds_memory():
    for n_clips in (1, 1000, 5000, 50_000, 10**6):
        b = M.auto_block_size(n_clips)
        assert 64 <= b <= 8192 and b % 64 == 0
        assert b == 64 or b * n_clips * 4 <= M.BLOCK_BYTES


def test_auto_block_size_prefers_cache_sized_blocks_of_at_least_1024_rows():
    assert M.auto_block_size(5000) * 5000 * 4 <= M.CACHE_BLOCK_BYTES  # 1,664 rows, not 8,192
    assert M.auto_block_size(50_000) == M.MIN_PREFERRED_ROWS  # 200 MB: still under the memory cap
    assert M.auto_block_size(500_000) * 500_000 * 4 <= M.BLOCK_BYTES  # the cap wins


# --------------------------------------------------------------------------- errors and aggregation


def test_input_errors_name_the_offender():
    sims = np.zeros((3, 2), dtype=np.float32)
    with pytest.raises(InputError, match="row 2 points to clip 5"):
        M.retrieval_metrics(sims, np.array([0, 1, 5]))
    with pytest.raises(InputError, match=r"expected \(3,\)"):
        M.retrieval_metrics(sims, np.array([0, 1]))
    with pytest.raises(InputError, match="integer"):
        M.retrieval_metrics(sims, np.array([0.0, 1.0, 1.0]))
    bad = sims.copy()
    bad[1, 0] = np.nan
    with pytest.raises(InputError, match="row 1, column 0"):
        M.retrieval_metrics(bad, np.array([0, 1, 1]))
    t = np.ones((4, 3), dtype=np.float32)
    t[3, 1] = np.inf
    with pytest.raises(InputError, match="row 3"):
        M.blocked_retrieval_metrics(t, np.ones((2, 3)), np.array([0, 0, 1, 1]), block_size=2)
    with pytest.raises(InputError, match="dim"):
        M.blocked_retrieval_metrics(np.ones((4, 3)), np.ones((2, 5)), np.array([0, 0, 1, 1]))
    with pytest.raises(InputError, match="empty"):
        M.summarize_ranks([])


def test_aggregate_runs_mean_std_over_seeds():
    rng = np.random.default_rng(81)
    runs = []
    for _ in range(3):
        c2c = random_assignment(rng, 30, max_caps=5)
        runs.append(M.retrieval_metrics(random_sims(rng, len(c2c), 30), c2c))
    agg = M.aggregate_runs(runs)
    for direction in ("t2a", "a2t"):
        for key in M.METRIC_KEYS:
            values = [r[direction][key] for r in runs]
            assert agg[direction][key]["mean"] == pytest.approx(statistics.fmean(values))
            assert agg[direction][key]["std"] == pytest.approx(statistics.pstdev(values), abs=1e-12)
            assert agg[direction][key]["values"] == values
    sample = M.aggregate_runs(runs, ddof=1)
    assert sample["t2a"]["R5"]["std"] == pytest.approx(statistics.stdev([r["t2a"]["R5"] for r in runs]))
    with pytest.raises(InputError, match="same keys"):
        M.aggregate_runs([runs[0], {"t2a": runs[0]["t2a"]}])
    with pytest.raises(InputError):
        M.aggregate_runs([])

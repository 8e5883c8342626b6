"""Search latency: exact search over 100,000 vectors and the ANN index over 1,000,000 (recall vs exact).

    python bench/bench_search.py            # full size (the lead runs this on a quiet machine)
    python bench/bench_search.py --quick    # tiny sizes, a few seconds: checks the script works

Data: L2-normalised 2048-d vectors (the paper's embedding size) from a seeded Gaussian mixture
(``--centers`` clusters; each vector = centre + noise), generated in chunks so that the 1M set
never exists as one float32 array (8 GB): it goes chunk by chunk into the faiss index, and the
exact top-k of every query is computed on the fly over the same chunks (the ground truth for the
recall). Queries come from the same mixture. Real embeddings are more structured than this; rerun
with ``--vectors DIR`` (pipelines.embed output: caption vectors as queries, audio vectors as the
base) to measure recall on them.

Measured (one query at a time, top-``k``, after warm-up): p50/p99 latency of
``ExactIndex.search`` at ``--n_exact``; of ``AnnIndex.search`` at ``--n_exact`` (same data: the
ratio exact/ANN) and at ``--n_ann``; ANN recall@k against exact search; index build time and
size. Results go to ``bench/results/search.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atr_core.search.searcher import AnnIndex, AnnSpec, ExactIndex, normalize_rows, recall_at_k, top_k  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "search.json"


def mixture_chunks(n: int, dim: int, centers: int, noise: float, seed: int, chunk: int, stream: int = 0):
    """Yield (start, float32 unit vectors) chunks of a seeded Gaussian mixture, ``n`` rows in all.

    The centres depend on ``seed`` only; ``stream`` selects an independent sequence of draws
    (0: base vectors, 1: queries), and a chunk's rows depend only on its start and size.
    """
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((centers, dim)).astype(np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        crng = np.random.default_rng([seed, stream, start])
        x = means[crng.integers(0, centers, m)]
        x += noise * crng.standard_normal((m, dim), dtype=np.float32)
        yield start, normalize_rows(x)


def latencies(fn, queries: np.ndarray, warmup: int = 3) -> dict[str, float]:
    """p50/p99/mean milliseconds of ``fn(q)`` over single queries."""
    for q in queries[:warmup]:
        fn(q)
    times = []
    for q in queries:
        t0 = time.perf_counter()
        fn(q)
        times.append((time.perf_counter() - t0) * 1000.0)
    t = np.asarray(times)
    return {
        "p50_ms": float(np.percentile(t, 50)),
        "p99_ms": float(np.percentile(t, 99)),
        "mean_ms": float(t.mean()),
        "queries": len(t),
    }


def merge_topk(best_s, best_i, scores, offset, k):
    """Running exact top-k over chunks: merge a chunk's scores (Q, m) into (best_s, best_i)."""
    idx, s = top_k(scores, k)
    cand_s = np.concatenate([best_s, s], axis=1)
    cand_i = np.concatenate([best_i, idx + offset], axis=1)
    sel, _ = top_k(cand_s, k)
    return np.take_along_axis(cand_s, sel, axis=1), np.take_along_axis(cand_i, sel, axis=1)


def bench_exact_and_ann_small(args, base: np.ndarray, queries: np.ndarray) -> dict:
    exact = ExactIndex(base, normalized=True)
    out = {"n": len(base), "dim": base.shape[1]}
    out["exact"] = latencies(lambda q: exact.search(q, args.k), queries)
    out["exact"]["target_p50_ms"] = 50.0
    _, truth = exact.search(queries, args.k)
    t0 = time.perf_counter()
    ann = AnnIndex.build(base, AnnSpec(args.ann_factory, args.nprobe, args.train_size), normalized=True)
    out["ann"] = {"factory": ann.spec.factory, "nprobe": args.nprobe, "build_s": time.perf_counter() - t0}
    out["ann"].update(latencies(lambda q: ann.search(q, args.k), queries))
    out["ann"][f"recall@{args.k}"] = recall_at_k(truth, ann.search(queries, args.k)[1])
    out["exact_over_ann_p50"] = out["exact"]["p50_ms"] / max(out["ann"]["p50_ms"], 1e-9)
    return out


def bench_ann_large(args, queries: np.ndarray) -> dict:
    spec = AnnSpec(args.ann_factory, args.nprobe, args.train_size, seed=args.seed)
    index = AnnIndex.empty(args.dim, args.n_ann, spec)
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    t_build = t_exact = 0.0
    chunks = mixture_chunks(args.n_ann, args.dim, args.centers, args.noise, args.seed + 1, args.chunk)
    for start, x in chunks:
        if not index.index.is_trained:
            # Train on the first rows of the base set (i.i.d. draws, so a random sample).
            n_train = min(args.train_size, args.n_ann)
            gen = mixture_chunks(n_train, args.dim, args.centers, args.noise, args.seed + 1, args.chunk)
            sample = np.concatenate([xs for _, xs in gen])
            t0 = time.perf_counter()
            index.train(sample, normalized=True)
            t_build += time.perf_counter() - t0
            del sample
        t0 = time.perf_counter()
        index.add(x, normalized=True)
        t_build += time.perf_counter() - t0
        t0 = time.perf_counter()
        best_s, best_i = merge_topk(best_s, best_i, queries @ x.T, start, args.k)
        t_exact += time.perf_counter() - t0
    out = {
        "n": args.n_ann,
        "dim": args.dim,
        "factory": index.spec.factory,
        "nprobe": args.nprobe,
        "train_size": args.train_size,
        "build_s": t_build,
        "exact_ground_truth_s": t_exact,
    }
    out.update(latencies(lambda q: index.search(q, args.k), queries))
    out[f"recall@{args.k}"] = recall_at_k(best_i, index.search(queries, args.k)[1])
    return out


def bench_real(args) -> dict:
    from atr_core.formats.vectors import read_vectors

    audio = read_vectors(args.vectors, kind="audio")
    caps = read_vectors(args.vectors, kind="caption")
    rng = np.random.default_rng(args.seed)
    pick = rng.choice(len(caps), min(args.queries, len(caps)), replace=False)
    res = bench_exact_and_ann_small(args, normalize_rows(audio.vectors), normalize_rows(caps.vectors[pick]))
    res["source"] = args.vectors
    return res


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (seconds): check the script")
    p.add_argument("--n_exact", type=int, default=100_000, help="vectors for exact search (default 100,000)")
    p.add_argument(
        "--n_ann", type=int, default=1_000_000, help="vectors for the ANN index (default 1,000,000)"
    )
    p.add_argument("--dim", type=int, default=2048, help="vector dimension (default 2048, the paper's)")
    p.add_argument("--queries", type=int, default=200, help="timed single queries (default 200)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--centers", type=int, default=2000, help="mixture components of the synthetic data")
    p.add_argument("--noise", type=float, default=1.0, help="noise std per dimension (centres: std 1)")
    p.add_argument(
        "--ann_factory", default="auto", help="faiss index_factory string (default auto: IVF-Flat)"
    )
    p.add_argument("--nprobe", type=int, default=32)
    p.add_argument("--train_size", type=int, default=100_000, help="vectors used to train the IVF quantiser")
    p.add_argument("--chunk", type=int, default=50_000, help="rows generated and added at a time")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vectors", default=None, help="measure on real pipelines.embed vectors instead")
    p.add_argument("--skip_large", action="store_true", help="skip the --n_ann part")
    p.add_argument("--out", default=None, help="results JSON (default: search.json, search_quick.json)")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = str(RESULTS.with_name("search_quick.json") if args.quick else RESULTS)
    if args.quick:
        args.n_exact, args.n_ann, args.dim, args.queries = 5_000, 20_000, 256, 50
        args.train_size, args.chunk, args.centers = 5_000, 5_000, 200

    import faiss

    threads = faiss.omp_get_max_threads()
    result = {
        "machine": {
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "faiss": faiss.__version__,
            "faiss_threads": threads,
            "numpy": np.__version__,
        },
        "params": {k: v for k, v in vars(args).items() if k != "out"},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    # Same mixture (same seed -> same centres) as the base sets, independent draws (stream 1).
    qgen = mixture_chunks(
        args.queries, args.dim, args.centers, args.noise, args.seed + 1, args.queries, stream=1
    )
    queries = next(qgen)[1]
    if args.vectors:
        result["real"] = bench_real(args)
    else:
        base = np.concatenate(
            [
                x
                for _, x in mixture_chunks(
                    args.n_exact, args.dim, args.centers, args.noise, args.seed + 1, args.chunk
                )
            ]
        )
        result["small"] = bench_exact_and_ann_small(args, base, queries)
        del base
        if not args.skip_large:
            result["large"] = bench_ann_large(args, queries)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out)
    print(summary(result, args.k))
    print(f"results written to {out}")
    return result


def summary(r: dict, k: int) -> str:
    lines = []
    for key in ("small", "real"):
        if key in r:
            s = r[key]
            lines.append(
                f"exact  n={s['n']:>9,} dim={s['dim']}: p50 {s['exact']['p50_ms']:.2f} ms, "
                f"p99 {s['exact']['p99_ms']:.2f} ms (target p50 < 50 ms)"
            )
            a = s["ann"]
            lines.append(
                f"ann    n={s['n']:>9,} {a['factory']} nprobe={a['nprobe']}: p50 {a['p50_ms']:.2f} ms, "
                f"p99 {a['p99_ms']:.2f} ms, recall@{k} {a[f'recall@{k}']:.3f}; exact/ann p50 = "
                f"{s['exact_over_ann_p50']:.1f}x"
            )
    if "large" in r:
        g = r["large"]
        lines.append(
            f"ann    n={g['n']:>9,} {g['factory']} nprobe={g['nprobe']}: p50 {g['p50_ms']:.2f} ms, "
            f"p99 {g['p99_ms']:.2f} ms, recall@{k} {g[f'recall@{k}']:.3f}, build {g['build_s']:.1f} s"
        )
    lines.append(f"peak RSS {r['peak_rss_mb']:.0f} MB")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

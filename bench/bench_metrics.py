"""Retrieval-metrics benchmark: naive full-matrix numpy vs the blocked path, in one run.

    python bench/bench_metrics.py            # full run (lead, quiet machine; roughly 10 minutes on 2 cores)
    python bench/bench_metrics.py --quick    # smoke run at tiny sizes (seconds)

(1) At a size the naive path can hold (default 5,000 clips x 25,000 captions x 2048-d): time and peak
    memory of ``retrieval_metrics(text @ audio.T)`` against ``blocked_retrieval_metrics``; checks that
    the metrics and the rank vectors are identical and reports the speed ratio.
(2) The blocked path alone at full size (default 50,000 x 250,000 x 2048): time and peak RSS, against
    the 2 GB target.

Every measurement runs in a fresh subprocess. Peak memory is measured honestly: once the inputs exist,
the worker resets the kernel's peak-RSS mark (``echo 5 > /proc/self/clear_refs``) and reads VmHWM after
the computation, so ``peak_delta_mb`` is what the computation itself added; ``peak_rss_mb`` is the
process total, inputs included (falls back to ru_maxrss where clear_refs is unavailable).

Inputs are generated from a seed in fixed 1,024-row chunks: clip vectors are random unit vectors,
caption c of clip j is ``normalise(signal * a_j + noise)`` (5 captions per clip, audio-major order, the
paper's layout), so retrieval is neither trivial nor random. At full size the 250,000 x 2048 caption
matrix alone would be 2 GB in float32: the blocked worker never materialises it. It passes a lazy object
that generates each caption chunk on demand from (seed, chunk index), so only the 410 MB of clip vectors
and one block are ever in memory; generation time is measured and reported separately.
Results go to bench/results/metrics.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchutil import machine_basics, peak_kb, status_kb

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CHUNK = 1024
CAPTIONS_PER_CLIP = 5


# --------------------------------------------------------------------------- inputs


def make_audio(n_clips: int, dim: int, seed: int) -> np.ndarray:
    """Random unit clip vectors, float32, generated chunk by chunk (no float64 temporaries)."""
    out = np.empty((n_clips, dim), dtype=np.float32)
    for k, i in enumerate(range(0, n_clips, CHUNK)):
        rng = np.random.default_rng([seed, 0, k])
        block = rng.standard_normal((min(CHUNK, n_clips - i), dim), np.float32)
        out[i : i + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


class SeededText:
    """Caption vectors generated on demand, chunk by chunk, from (seed, chunk index).

    Supports ``.shape`` and row slices, which is all ``blocked_retrieval_metrics`` needs.
    """

    def __init__(self, audio: np.ndarray, caption_to_clip: np.ndarray, seed: int, signal: float):
        self.audio, self.c2c, self.seed = audio, caption_to_clip, seed
        # own score ~ signal noise-standard-deviations above a random clip's score, whatever the dim
        self.signal = signal / np.sqrt(audio.shape[1])
        self.shape = (len(caption_to_clip), audio.shape[1])
        self.generation_s = 0.0

    def _chunk(self, k: int) -> np.ndarray:
        lo, hi = k * CHUNK, min((k + 1) * CHUNK, self.shape[0])
        rng = np.random.default_rng([self.seed, 1, k])
        noise = rng.standard_normal((hi - lo, self.shape[1]), np.float32) / np.float32(np.sqrt(self.shape[1]))
        rows = noise + np.float32(self.signal) * self.audio[self.c2c[lo:hi]]
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    def __getitem__(self, item: slice) -> np.ndarray:
        start, stop, step = item.indices(self.shape[0])
        if step != 1:
            raise ValueError("SeededText supports contiguous row slices only")
        if stop <= start:
            return np.zeros((0, self.shape[1]), np.float32)
        t0 = time.perf_counter()
        first = start // CHUNK
        rows = np.concatenate([self._chunk(k) for k in range(first, (stop - 1) // CHUNK + 1)])
        rows = rows[start - first * CHUNK :][: stop - start]
        self.generation_s += time.perf_counter() - t0
        return rows


def make_inputs(n_clips: int, dim: int, seed: int, signal: float) -> tuple[np.ndarray, SeededText, np.ndarray]:  # noqa: E501
    audio = make_audio(n_clips, dim, seed)
    c2c = np.repeat(np.arange(n_clips, dtype=np.int64), CAPTIONS_PER_CLIP)
    return audio, SeededText(audio, c2c, seed, signal), c2c


# --------------------------------------------------------------------------- memory


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------- worker


def worker(args: argparse.Namespace) -> None:
    """Run one path in this (fresh) process and print a JSON line."""
    from atr_core.evaluation import metrics as M

    audio, lazy, c2c = make_inputs(args.clips, args.dim, args.seed, args.signal)
    text = lazy[0 : lazy.shape[0]] if args.worker == "naive" or args.materialise else lazy
    lazy.generation_s = 0.0
    rss_before = status_kb("VmRSS") or 0
    exact_peak = reset_peak()
    block_size = args.block_size or M.auto_block_size(args.clips)
    t0 = time.perf_counter()
    if args.worker == "naive":
        sims = text @ audio.T
        t_matmul = time.perf_counter() - t0
        ranks = M.rank_vectors(sims, c2c)
        metrics = M.metrics_from_ranks(ranks, audio.shape[0])
    else:
        t_matmul = None
        ranks = M.blocked_rank_vectors(text, audio, c2c, block_size=block_size)
        metrics = M.metrics_from_ranks(ranks, audio.shape[0])
    elapsed = time.perf_counter() - t0
    peak = peak_kb()
    if args.ranks_out:
        np.savez(args.ranks_out, **ranks)
    print(
        json.dumps(
            {
                "path": args.worker,
                "clips": args.clips,
                "captions": int(len(c2c)),
                "dim": args.dim,
                "block_size": block_size if args.worker == "blocked" else None,
                "time_s": elapsed,
                "matmul_s": t_matmul,
                "text_generation_s": lazy.generation_s,
                "time_excluding_generation_s": elapsed - lazy.generation_s,
                "input_mb": (audio.nbytes + (text.nbytes if isinstance(text, np.ndarray) else 0)) / 2**20,
                "rss_before_mb": rss_before / 1024,
                "peak_rss_mb": peak / 1024,
                "peak_delta_mb": (peak - rss_before) / 1024 if exact_peak else None,
                "peak_method": "VmHWM after clear_refs" if exact_peak else "ru_maxrss (process lifetime)",
                "metrics": metrics,
            }
        )
    )


def run_worker(path: str, clips: int, dim: int, args: argparse.Namespace, ranks_out: str = "", **extra) -> dict:  # noqa: E501
    cmd = [
        sys.executable, __file__, "--worker", path, "--clips", str(clips), "--dim", str(dim),
        "--seed", str(args.seed), "--signal", str(args.signal), "--block_size", str(args.block_size),
    ]  # fmt: skip
    if ranks_out:
        cmd += ["--ranks_out", ranks_out]
    if extra.get("materialise"):
        cmd.append("--materialise")
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"worker {path} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- main


def machine() -> dict:
    """Where this ran, with the BLAS numpy uses."""
    blas = "unknown"
    try:
        cfg = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas = f"{cfg.get('name')} {cfg.get('version')}"
    except Exception:  # noqa: BLE001 - informative only
        pass
    return {
        **machine_basics(),
        "numpy": np.__version__,
        "blas": blas,
    }


def compare(naive: dict, blocked: dict, naive_npz: str, blocked_npz: str) -> dict:
    a, b = np.load(naive_npz), np.load(blocked_npz)
    diff = {k: int(np.count_nonzero(a[k] != b[k])) for k in ("t2a", "a2t", "a2t_clips")}
    return {
        "metrics_identical": naive["metrics"] == blocked["metrics"],
        "rank_vectors_identical": all(v == 0 for v in diff.values()),
        "rank_entries_differing": diff,
        "speedup_blocked_over_naive": naive["time_s"] / blocked["time_s"],
        "peak_delta_ratio_naive_over_blocked": (
            naive["peak_delta_mb"] / blocked["peak_delta_mb"] if naive["peak_delta_mb"] else None
        ),
    }


def size(clips: int, dim: int) -> str:
    return f"{clips} clips x {CAPTIONS_PER_CLIP * clips} captions x {dim}-d"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes, a smoke run of a few seconds")
    p.add_argument("--compare_clips", type=int, default=5000, help="clips in part (1) (captions = 5x)")
    p.add_argument("--full_clips", type=int, default=50000, help="clips in part (2) (captions = 5x)")
    p.add_argument("--dim", type=int, default=2048, help="embedding dimension")
    p.add_argument(
        "--block_size", type=int, default=0, help="captions per block (0: auto_block_size, 32-256 MB a block)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--signal", type=float, default=4.5, help="own-caption score margin in noise standard deviations"
    )
    p.add_argument("--skip_full", action="store_true", help="run part (1) only")
    p.add_argument("--target_mb", type=float, default=2048.0, help="peak RSS target of part (2)")
    p.add_argument("--out", default=None, help="results JSON (default: metrics.json, metrics_quick.json)")
    p.add_argument("--worker", choices=["naive", "blocked"], help=argparse.SUPPRESS)
    p.add_argument("--clips", type=int, help=argparse.SUPPRESS)
    p.add_argument("--ranks_out", default="", help=argparse.SUPPRESS)
    p.add_argument("--materialise", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    if args.quick:
        args.compare_clips, args.full_clips, args.dim = 400, 2000, 128

    results: dict = {"machine": machine(), "quick": args.quick, "seed": args.seed, "signal": args.signal}
    with tempfile.TemporaryDirectory() as tmp:
        nz, bz = os.path.join(tmp, "naive.npz"), os.path.join(tmp, "blocked.npz")
        print(f"(1) naive vs blocked at {size(args.compare_clips, args.dim)}")
        naive = run_worker("naive", args.compare_clips, args.dim, args, nz)
        blocked = run_worker("blocked", args.compare_clips, args.dim, args, bz, materialise=True)
        cmp = compare(naive, blocked, nz, bz)
    results["compare"] = {"naive": naive, "blocked": blocked, **cmp}
    for r in (naive, blocked):
        print(f"    {r['path']:8s} {r['time_s']:8.2f} s   peak +{r['peak_delta_mb'] or float('nan'):8.1f} MB "
              f"(process {r['peak_rss_mb']:.0f} MB)")  # fmt: skip
    print(f"    blocked speed-up x{cmp['speedup_blocked_over_naive']:.2f}; metrics identical: "
          f"{cmp['metrics_identical']}; rank vectors identical: {cmp['rank_vectors_identical']} "
          f"{cmp['rank_entries_differing']}")  # fmt: skip
    if not cmp["rank_vectors_identical"]:
        print("    (differences can only come from sgemm rounding that depends on the block layout, ~1e-7 "
              "relative, moving near-ties; see docs/metrics.md)")  # fmt: skip

    if not args.skip_full:
        print(f"(2) blocked at {size(args.full_clips, args.dim)} (captions generated lazily)")
        full = run_worker("blocked", args.full_clips, args.dim, args)
        full["peak_rss_under_target"] = full["peak_rss_mb"] < args.target_mb
        full["target_mb"] = args.target_mb
        results["full"] = full
        print(f"    {full['time_s']:.1f} s (of which caption generation {full['text_generation_s']:.1f} s), "
              f"peak RSS {full['peak_rss_mb']:.0f} MB (target < {args.target_mb:.0f} MB: "
              f"{'met' if full['peak_rss_under_target'] else 'MISSED'})")  # fmt: skip
        m = full["metrics"]
        print(f"    t2a R@1 {m['t2a']['R1']:.1f} MedR {m['t2a']['MedR']:.1f}; "
              f"a2t R@1 {m['a2t']['R1']:.1f} MedR {m['a2t']['MedR']:.1f}")  # fmt: skip

    out = Path(args.out or RESULTS / ("metrics_quick.json" if args.quick else "metrics.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(results, indent=2))
    tmp_out.replace(out)
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

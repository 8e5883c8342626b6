"""Extraction benchmark: bare CNN14 vs the naive per-file loop vs the Beam pipeline, in one run.

    python bench/bench_extract.py            # full run (about 25 minutes on 2 cores)
    python bench/bench_extract.py --quick    # a smoke run with few files

(a) the bare model on pre-decoded 10 s batches (eager/channels_last/folded BatchNorm/matmul
    convs/torch.compile, several batch sizes);
(b) the naive loop a user would write: decode one file (librosa.load at 32 kHz), one forward, repeat;
(c) `python -m pipelines.extract` end to end on the local runner over a corpus of mixed formats:
    1045 files (the size of Clotho's evaluation split), and the same over 120 and over 4 files (the
    fixed start-up cost);
(d) peak RSS of the pipeline over a corpus that includes a 10-minute file;
(e) writing segment shards: Beam's WriteToParquetBatched settings vs atr's ParquetTableSink.
The bench process keeps freed memory for reuse (``atr_core.runtime.cpu_memory.retain_freed_memory``, as
the pipeline's CPU workers do) before it measures (a): it is one of the best settings. (b) runs in
fresh subprocesses with glibc's default malloc, as a user's loop would, and so does one extra (a)
row that shows what keeping freed memory is worth. Each measurement that needs its own peak memory
runs in a fresh subprocess. Results go to
bench/results/extract.json; docs/benchmarks.md summarises them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchutil import machine_basics

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SR = 32000
SOURCE_SR = 44100  # the corpus's files: 44.1 kHz, so every format is resampled
CLIP_S = 10.0


FORMATS = [("wav", "PCM_16"), ("flac", "PCM_16"), ("mp3", "MPEG_LAYER_III"), ("ogg", "VORBIS")]


def write_clip(folder: Path, i: int, seconds: float) -> Path:
    """Clip ``i`` of the corpus: a 44.1 kHz stereo tone in noise, in the i-th format of FORMATS."""
    import soundfile as sf

    t = np.arange(int(seconds * SOURCE_SR)) / SOURCE_SR
    ext, subtype = FORMATS[i % len(FORMATS)]
    f0 = 110.0 * (1 + i % 17)
    tone = 0.3 * np.sin(2 * np.pi * f0 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 0.5 * t))
    noise = 0.05 * np.random.default_rng(i).standard_normal((len(t), 2))
    path = folder / f"clip_{i:04d}.{ext}"
    sf.write(path, (tone[:, None] + noise).astype(np.float32), SOURCE_SR, subtype=subtype)
    return path


def make_corpus(folder: Path, n_files: int, seconds: float = CLIP_S, long_file_s: float = 0.0) -> list[Path]:
    """Write ``n_files`` clips in WAV/FLAC/MP3/OGG rotation (and one long WAV if asked), on every core."""
    import os
    from concurrent.futures import ProcessPoolExecutor

    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:  # MP3 and Vorbis encoding is slow
        paths = list(pool.map(write_clip, [folder] * n_files, range(n_files), [seconds] * n_files))
    if long_file_s:
        rng = np.random.default_rng(n_files)
        long = (0.1 * rng.standard_normal(int(long_file_s * SOURCE_SR))).astype(np.float32)
        path = folder / "long_10min.wav"
        sf.write(path, long, SOURCE_SR, subtype="PCM_16")
        paths.append(path)
    return paths


def machine() -> dict:
    """Where this ran."""
    import torch

    return {
        **machine_basics(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


# --------------------------------------------------------------------------------------------
# (a) bare model
# --------------------------------------------------------------------------------------------


def build_variant(info, variant: str):
    """Cnn14Segments prepared as ``variant`` says.

    cl: channels_last; compile: torch.compile; nofold: BatchNorm kept; nomm: every conv on torch's
    own kernel (no matmul convs).
    """
    from atr_core.audio.cnn14 import load_cnn14
    from atr_core.audio.features import prepare_for_inference

    return prepare_for_inference(
        load_cnn14(info, "cpu"),
        channels_last="cl" in variant,
        compile="compile" in variant,
        fold_batchnorm="nofold" not in variant,
        matmul_convs="nomm" not in variant,
    )


def time_model(model, bs: int, reps: int) -> tuple[float, float]:
    """(first call seconds, median seconds per batch) of ``model`` on a random (bs, 10 s) batch."""
    import torch

    x = torch.from_numpy(np.random.default_rng(0).uniform(-0.5, 0.5, (bs, int(CLIP_S * SR))).astype("f4"))
    t0 = time.perf_counter()
    with torch.inference_mode():
        model(x)  # warm-up (and compilation)
    first = time.perf_counter() - t0
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        with torch.inference_mode():
            model(x)
        times.append(time.perf_counter() - t0)
    return first, float(np.median(times))


def bare_model(info, variants: list[tuple[str, int]], reps: int) -> list[dict]:
    """Clips/s and GFLOP/s of Cnn14Segments on random 10 s batches, per (variant, batch size)."""
    gflop = cnn14_gflop_per_clip(info)
    out = []
    for variant, bs in variants:
        first, med = time_model(build_variant(info, variant), bs, reps)
        row = {
            "variant": variant,
            "batch": bs,
            "first_call_s": round(first, 2),
            "s_per_batch": round(med, 3),
            "clips_per_s": round(bs / med, 3),
            "gflop_per_s": round(gflop * bs / med, 1),
        }
        print("(a)", row, flush=True)
        out.append(row)
    return out


def one_variant(spec: str, retain: bool) -> None:
    """Print the (a) row of ``VARIANT:BATCH:CHECKPOINT`` as JSON, measured in this process."""
    from atr_core.audio.cnn14 import resolve_checkpoint
    from atr_core.runtime.cpu_memory import retain_freed_memory

    variant, bs, ckpt = spec.split(":", 2)
    if retain:
        retain_freed_memory()
    (row,) = bare_model(resolve_checkpoint(ckpt), [(variant, int(bs))], reps=5)
    print("ROW=" + json.dumps({**row, "freed_memory_retained": retain}), flush=True)


def variant_in_subprocess(variant: str, bs: int, ckpt: str, retain: bool) -> dict:
    """(a) for one variant in a fresh process (so glibc malloc has its default settings unless ``retain``)."""
    args = ["--one_variant", f"{variant}:{bs}:{ckpt}"]
    return row_from_subprocess(args if retain else [*args, "--no_retain"])


def row_from_subprocess(args: list[str]) -> dict:
    """Run this script with ``args`` in a fresh process and return the row it prints as ``ROW=<json>``."""
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return json.loads(next(x for x in out.stdout.splitlines() if x.startswith("ROW="))[4:])


def cnn14_gflop_per_clip(info) -> float:
    """GFLOP (2 x MACs of conv/matmul) of one 10 s clip, counted by torch's FlopCounterMode."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from atr_core.audio.cnn14 import load_cnn14

    model = load_cnn14(info, "cpu")
    x = torch.zeros(1, int(CLIP_S * SR))
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(x)
    return counter.get_total_flops() / 1e9


# --------------------------------------------------------------------------------------------
# (b) naive loop
# --------------------------------------------------------------------------------------------


def naive_model(info, warm_file: Path):
    """The model as a user first loads it (eager, NCHW, BatchNorm kept), warmed up on one file."""
    import librosa
    import torch

    from atr_core.audio.cnn14 import load_cnn14

    model = load_cnn14(info, "cpu")
    with torch.no_grad():  # warm-up on the first file (librosa's lazy imports, torch init)
        model(torch.Tensor(librosa.load(warm_file, sr=SR, mono=True)[0][None, :]))
    return model


def naive_in_subprocess(ckpt: str, files: list[Path], label: str = "(b)") -> dict:
    """(b) over ``files`` in a fresh process (glibc's default malloc, as a user's script has)."""
    row = row_from_subprocess(["--naive_run", ckpt, *map(str, files)])
    print(label, row, flush=True)
    return row


def naive_loop(model, files: list[Path], label: str = "(b)") -> dict:
    """What a user writes first: librosa.load one file at 32 kHz mono, one forward, repeat."""
    import librosa
    import torch

    t0 = time.perf_counter()
    for f in files:
        audio, _ = librosa.load(f, sr=SR, mono=True)
        with torch.no_grad():
            model(torch.Tensor(audio[None, :])).data.cpu().numpy()
    wall = time.perf_counter() - t0
    row = {"files": len(files), "wall_s": round(wall, 2), "clips_per_s": round(len(files) / wall, 3)}
    print(label, row, flush=True)
    return row


# --------------------------------------------------------------------------------------------
# (c), (d) the pipeline, in a subprocess
# --------------------------------------------------------------------------------------------


# The pipeline's own peak RSS: benchutil.peak_kb reads VmHWM (ru_maxrss would report the bench
# process's high-water mark, which Linux carries into a child across fork + exec).
RSS_WRAPPER = f"""
import runpy, sys
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
from benchutil import peak_kb
sys.argv = ["pipelines.extract"] + sys.argv[1:]
try:
    runpy.run_module("pipelines.extract", run_name="__main__")
finally:
    sys.stderr.write("ATR_PEAK_RSS_KB=%d\\n" % peak_kb())
"""


def pipeline_run(input_glob: str, output: Path, checkpoint: str, extra: list[str]) -> dict:
    """Run the extract pipeline in a fresh process; wall time and that process's peak RSS."""
    if output.exists():
        shutil.rmtree(output)
    cmd = [
        sys.executable,
        "-c",
        RSS_WRAPPER,
        f"--input={input_glob}",
        f"--output={output}",
        f"--cnn14_checkpoint={checkpoint}",
        *extra,
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"pipeline failed with exit code {proc.returncode}")
    marker = "ATR_PEAK_RSS_KB="
    peak_kb = [int(line[len(marker) :]) for line in proc.stderr.splitlines() if line.startswith(marker)]
    summary = {}
    for s in sorted(output.glob("summary*.json")):
        summary = json.loads(s.read_text())
    peak_mb = round(peak_kb[-1] / 1024, 1)
    return {"wall_s": round(wall, 2), "peak_rss_mb": peak_mb, "summary": summary, "args": extra}


# --------------------------------------------------------------------------------------------
# (e) shard writing
# --------------------------------------------------------------------------------------------


def shard_writing(folder: Path, n_tables: int = 8, rows: int = 64, reps: int = 3) -> dict:
    """ms and bytes per 10 s clip to write segment shards: Beam's WriteToParquetBatched settings
    (pyarrow's defaults: dictionary and statistics on every column) vs atr's ParquetTableSink."""
    import pyarrow.parquet as pq

    from atr_core.formats import shards
    from pipelines.parquet_sink import ParquetTableSink

    ident = shards.ShardIdentity("cnn14", 2048, "float16", "bench", "0" * 64)
    schema = shards.segment_schema(ident)
    rng = np.random.default_rng(0)
    row = {"split": None, "duration_s": CLIP_S, "source_sample_rate": SOURCE_SR, "source_channels": 2}
    row |= {"num_segments": 31, "feature": "cnn14", "checkpoint_sha256": "0" * 64, "package_version": "b"}
    tables = [
        shards.rows_to_table(
            [
                {
                    **row,
                    "audio_id": f"clip_{t}_{i}.wav",
                    "uri": f"/corpus/clip_{t}_{i}.wav",
                    "embedding": np.maximum(rng.standard_normal((31, 2048)), 0).astype(np.float16),
                }
                for i in range(rows)
            ],
            schema,
        )
        for t in range(n_tables)
    ]

    def beam_default(path: Path) -> None:
        with pq.ParquetWriter(path, schema, compression="zstd") as w:
            for t in tables:
                w.write_table(t)

    def atr_sink(path: Path) -> None:
        sink = ParquetTableSink(str(folder / "x"), schema, codec="zstd")
        handle = sink.open(str(path))
        for t in tables:
            sink.write_record(handle, t)
        sink.close(handle)

    out = {}
    clips = n_tables * rows
    for name, write in (("beam_default", beam_default), ("atr_sink", atr_sink)):
        times = []
        for r in range(reps):
            path = folder / f"{name}_{r}.parquet"
            t0 = time.perf_counter()
            write(path)
            times.append(time.perf_counter() - t0)
        size = path.stat().st_size
        ms = round(min(times) / clips * 1000, 3)
        out[name] = {"ms_per_clip": ms, "kb_per_clip": round(size / clips / 1024, 1)}
    out["speedup"] = round(out["beam_default"]["ms_per_clip"] / out["atr_sink"]["ms_per_clip"], 2)
    print("(e) shard writing", out, flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument(
        "--files",
        type=int,
        default=1045,
        help="files for the pipeline run (c) (default: Clotho evaluation's 1045)",
    )
    parser.add_argument("--mid_files", type=int, default=120, help="files for the shorter pipeline run (c)")
    parser.add_argument("--naive_files", type=int, default=48)
    parser.add_argument("--skip_compile", action="store_true", help="leave torch.compile out of (a)")
    parser.add_argument("--pipeline_args", default="", help="extra flags for pipelines.extract in (c)")
    parser.add_argument("--one_variant", default=None, help=argparse.SUPPRESS)  # VARIANT:BATCH:CKPT
    parser.add_argument("--no_retain", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--naive_run", nargs="+", default=None, help=argparse.SUPPRESS)  # CKPT FILE...
    args = parser.parse_args(argv)
    if args.naive_run:  # (b) in this fresh process, warmed up on the first file; prints its row as JSON
        from atr_core.audio.cnn14 import resolve_checkpoint

        ckpt, *paths = args.naive_run
        model = naive_model(resolve_checkpoint(ckpt), Path(paths[0]))
        row = naive_loop(model, [Path(p) for p in paths], label="(b) subprocess")
        print("ROW=" + json.dumps(row), flush=True)
        return
    if args.one_variant:  # (a) for one variant in this fresh process; prints its row as JSON
        one_variant(args.one_variant, retain=not args.no_retain)
        return

    from atr_core.audio.cnn14 import resolve_checkpoint, save_random_checkpoint
    from atr_core.runtime.cpu_memory import retain_freed_memory

    retained = retain_freed_memory()  # as the pipeline's CPU workers do; (a) and (b) get it too

    work = Path(tempfile.mkdtemp(prefix="atr-bench-extract-"))
    ckpt = work / "Cnn14_random.pth"
    save_random_checkpoint(ckpt, seed=0)
    n_files = 8 if args.quick else args.files
    reps = 1 if args.quick else 5
    files = make_corpus(work / "corpus", n_files)
    results: dict = {"machine": machine(), "quick": args.quick, "freed_memory_retained": retained}

    variants = [("eager_nofold_nomm", 1), ("eager", 1), ("eager_cl_nomm", 8)]
    variants += [("eager_cl", 1), ("eager_cl", 4), ("eager_cl", 8)]
    if not args.quick:
        variants += [("eager_cl", 16)]
    if not args.skip_compile and not args.quick:
        variants += [("compile_cl", 8), ("compile_cl", 16)]
    info = resolve_checkpoint(str(ckpt))  # validated and hashed once, as the pipeline does
    results["a_bare_model"] = bare_model(info, variants, reps)
    best_a = max(results["a_bare_model"], key=lambda r: r["clips_per_s"])
    if not args.quick:  # what keeping freed memory is worth: the best variant with glibc's defaults
        results["a_default_malloc"] = [
            variant_in_subprocess(best_a["variant"], best_a["batch"], str(ckpt), retain)
            for retain in (False, True, False)
        ]
    results["b_naive_loop"] = naive_in_subprocess(str(ckpt), files[: (4 if args.quick else args.naive_files)])

    # This machine's speed drifts by +-20 % over minutes (shared hosts), so each pipeline run is
    # bracketed by the best (a) variant and by (b) measured right before and right after it; the
    # headline ratios divide by the mean of those two brackets.
    best_model = build_variant(info, best_a["variant"])
    bracket_files = files[: (4 if args.quick else 16)]

    def brackets() -> dict[str, float]:
        _, med = time_model(best_model, best_a["batch"], max(1, reps - 2))
        b = naive_in_subprocess(str(ckpt), bracket_files, label="(b) bracket")
        row = {"a_best_clips_per_s": round(best_a["batch"] / med, 3), "b_clips_per_s": b["clips_per_s"]}
        print("bracket", row, flush=True)
        return row

    extra = args.pipeline_args.split() if args.pipeline_args else []
    # The same pipeline over a few files measures the fixed cost (interpreter, imports, model load):
    # the marginal rate (c - c_small) is the pipeline's throughput once running.
    small_n = 4
    small_dir = work / "corpus_small"
    small_dir.mkdir()
    for f in files[:small_n]:
        shutil.copy(f, small_dir / f.name)
    c_small = pipeline_run(str(small_dir / "*"), work / "out_c_small", str(ckpt), extra)
    runs = {}
    mid_n = min(args.mid_files, n_files)
    if mid_n < n_files:
        mid_dir = work / "corpus_mid"
        mid_dir.mkdir()
        for f in files[:mid_n]:
            shutil.copy(f, mid_dir / f.name)
        runs["c_pipeline_mid"] = (mid_dir, mid_n)
    runs["c_pipeline"] = (work / "corpus", n_files)
    results["ratios"] = {"best_a": best_a}
    for key, (folder, n) in runs.items():
        before = brackets()
        c = pipeline_run(str(folder / "*"), work / f"out_{key}", str(ckpt), extra)
        after = brackets()
        clips = c["summary"].get("clips_ok", n)
        c["clips"] = clips
        c["clips_per_s"] = round(clips / c["wall_s"], 3)
        c["fixed_cost_s"] = c_small["wall_s"]
        c["marginal_clips_per_s"] = round((clips - small_n) / (c["wall_s"] - c_small["wall_s"]), 3)
        c["brackets"] = {"before": before, "after": after}
        a_ref = (before["a_best_clips_per_s"] + after["a_best_clips_per_s"]) / 2
        b_ref = (before["b_clips_per_s"] + after["b_clips_per_s"]) / 2
        print(f"(c) {n} files", c, flush=True)
        results[key] = c
        tag = "c" if key == "c_pipeline" else "c_mid"
        results["ratios"].update(
            {
                f"{tag}_over_a_best": round(c["clips_per_s"] / a_ref, 3),
                f"{tag}_over_b": round(c["clips_per_s"] / b_ref, 3),
                f"{tag}_marginal_over_a_best": round(c["marginal_clips_per_s"] / a_ref, 3),
                f"{tag}_marginal_over_b": round(c["marginal_clips_per_s"] / b_ref, 3),
                f"{tag}_over_a_best_of_sweep": round(c["clips_per_s"] / best_a["clips_per_s"], 3),
                f"{tag}_over_b_of_sweep": round(c["clips_per_s"] / results["b_naive_loop"]["clips_per_s"], 3),
            }
        )
    results["ratios"]["a_best_over_b"] = round(
        best_a["clips_per_s"] / results["b_naive_loop"]["clips_per_s"], 3
    )

    results["e_shard_writing"] = shard_writing(work)

    if not args.quick:
        long_dir = work / "corpus_long"
        make_corpus(long_dir, 4, long_file_s=600.0)
        d = pipeline_run(str(long_dir / "*"), work / "out_d", str(ckpt), extra)
        print("(d)", d, flush=True)
        results["d_long_file"] = d

    print("ratios", results["ratios"], flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "extract_quick.json" if args.quick else "extract.json"
    (RESULTS / name).write_text(json.dumps(results, indent=2))
    print(f"wrote {RESULTS / name}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Training benchmark: the real shard loader vs tensors already in memory, and a full epoch, in one run.

    python bench/bench_train.py            # Clotho-sized: 3,839 clips x 70 segments x 2048 (+ 1,045 val)
    python bench/bench_train.py --quick    # a smoke run with tiny sizes (results: train_quick.json)

The benchmark writes its own corpus as real segment shards (float16, ReLU-like random features),
Clotho-format captions CSVs and a random 300-d word2vec file, then measures, with the paper's model
(NetRVLAD 12/20 clusters, 2048-d embedding, Ranger, batch 128):

(a) throughput, in clips/s: training steps fed by the real loader (shards -> float16 store ->
    shuffled batches -> collate) against the same steps fed from batches collated beforehand and
    held as tensors, alternated and repeated; the ratio loader / tensors must be >= 0.9;
    the streaming loader (shards re-read through a shuffle buffer) is measured the same way;
(b) in a fresh process: loading time, the float16 store footprint (segments x dim x 2 bytes),
    one training epoch, one validation pass and the process's peak RSS.

Results go to bench/results/train.json (train_quick.json with --quick); docs/train.md quotes them.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchutil import machine_basics

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))

FULL = dict(train=3839, val=1045, segments=70, dim=2048, text_dim=300, embed=2048, audio_k=12, text_k=20,
            batch=128, steps=6, reps=3, vocab=5000)
QUICK = dict(train=300, val=60, segments=20, dim=64, text_dim=16, embed=64, audio_k=4, text_k=4,
             batch=32, steps=4, reps=2, vocab=200)


# --------------------------------------------------------------------------- corpus


def make_corpus(folder: Path, size: dict, seed: int = 0) -> dict:
    """Real shards (256 clips each), Clotho captions CSVs and a word2vec file under ``folder``."""
    import pyarrow.parquet as pq
    from gensim.models import KeyedVectors

    from atr_core.formats.shards import ShardIdentity, rows_to_table, segment_schema

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    schema = segment_schema(ShardIdentity(feature="cnn14", embedding_dim=size["dim"]))
    ids = [f"clip_{i:05d}.wav" for i in range(size["train"] + size["val"])]
    (folder / "shards").mkdir(exist_ok=True)
    for k in range(0, len(ids), 256):
        rows = []
        for aid in ids[k : k + 256]:
            emb = np.maximum(rng.standard_normal((size["segments"], size["dim"]), dtype=np.float32), 0) * 0.1
            rows.append({
                "audio_id": aid, "uri": f"bench://{aid}", "split": None,
                "duration_s": 0.32 * size["segments"],
                "source_sample_rate": 44100, "source_channels": 1, "num_segments": size["segments"],
                "feature": "cnn14", "checkpoint_sha256": "", "package_version": "bench", "embedding": emb,
            })
        pq.write_table(rows_to_table(rows, schema), folder / "shards" / f"part-{k // 256:05d}.parquet")
    words = [f"w{i}" for i in range(size["vocab"])]
    kv = KeyedVectors(size["text_dim"])
    kv.add_vectors(words, rng.standard_normal((len(words), size["text_dim"]), dtype=np.float32) * 0.1)
    kv.save_word2vec_format(str(folder / "w2v.bin"), binary=True)

    def captions_csv(name: str, clip_ids: list[str]) -> str:
        path = folder / name
        with open(path, "w") as f:
            f.write("file_name,caption_1,caption_2,caption_3,caption_4,caption_5\n")
            for aid in clip_ids:
                caps = [" ".join(rng.choice(words, size=int(rng.integers(8, 21)))) for _ in range(5)]
                f.write(aid + "," + ",".join(caps) + "\n")
        return str(path)

    return {
        "segments": str(folder / "shards"),
        "train": captions_csv("clotho_captions_development.csv", ids[: size["train"]]),
        "val": captions_csv("clotho_captions_validation.csv", ids[size["train"] :]),
        "w2v": str(folder / "w2v.bin"),
    }


def load_sources(corpus: dict, streaming: bool = False, splits=("train", "val")):
    """Index the shards, join the captions and load the splits the way the training job does."""
    from atr_core.formats.manifest import read_manifest
    from atr_core.text.word_vectors import load_word_vectors
    from atr_core.training.data import join_captions, load_split, scan_shards

    wv = load_word_vectors(corpus["w2v"])
    index = scan_shards(corpus["segments"])
    entries = read_manifest(corpus["train"]) + read_manifest(corpus["val"])
    by_split, _ = join_captions(entries, index, list(splits))
    sources = {s: load_split(index, by_split[s], wv, 90, 20, streaming=streaming, pad_to_cap=False)
               for s in splits}
    return sources, wv


def build(size: dict, wv):
    import torch

    from atr_core.model.retrieval import ModelConfig, RetrievalModel
    from atr_core.training.optim import build_optimizer

    torch.manual_seed(0)
    config = ModelConfig(
        audio_dim=size["dim"], text_dim=wv.dim, embed_dim=size["embed"], audio_clusters=size["audio_k"],
        text_clusters=size["text_k"], max_segments=90,
    )
    model = RetrievalModel(config)
    return model, build_optimizer("ranger", model.parameters(), lr=0.01, weight_decay=1e-3)


# --------------------------------------------------------------------------- (a) throughput


def run_steps(model, optimizer, batches, loss_fn) -> tuple[float, int]:
    """Train on every batch of the iterable; (seconds, clips). Batch production is inside the timing."""
    import torch

    from atr_core.training.loop import batch_loss

    model.train()
    t0, clips = time.perf_counter(), 0
    for batch in batches:
        loss = batch_loss(model, batch, loss_fn)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        clips += len(batch)
    torch.cuda.synchronize() if torch.cuda.is_available() else None
    return time.perf_counter() - t0, clips


def throughput(corpus: dict, size: dict) -> dict:
    """Clips/s of the real loader vs pre-collated tensors (alternated), and of the streaming loader."""
    import itertools

    from atr_core.training.losses import MaxMarginRankingLoss

    loss_fn = MaxMarginRankingLoss(0.2)
    memory, wv = load_sources(corpus, splits=("train",))
    streaming, _ = load_sources(corpus, streaming=True, splits=("train",))
    model, optimizer = build(size, wv)
    steps, bs = size["steps"], size["batch"]

    def loader(src, epoch):
        return itertools.islice(src.batches(bs, epoch=epoch, shuffle=True, seed=0), steps)

    run_steps(model, optimizer, loader(memory["train"], 0), loss_fn)  # warm-up (allocator, kernels)
    rates = {"loader": [], "tensors": [], "streaming": []}
    for rep in range(size["reps"]):
        tensors = list(loader(memory["train"], 100 + rep))  # collated before the clock starts
        for name, batches in (
            ("loader", loader(memory["train"], 1 + rep)),
            ("tensors", tensors),
            ("streaming", loader(streaming["train"], 1 + rep)),
        ):
            sec, clips = run_steps(model, optimizer, batches, loss_fn)
            rates[name].append(clips / sec)
    med = {k: float(np.median(v)) for k, v in rates.items()}
    return {
        "steps_per_measurement": steps, "batch_clips": bs, "repetitions": size["reps"],
        "clips_per_s": {k: [round(x, 2) for x in v] for k, v in rates.items()},
        "median_clips_per_s": {k: round(v, 2) for k, v in med.items()},
        "ratio_loader_vs_tensors": round(med["loader"] / med["tensors"], 3),
        "ratio_streaming_vs_tensors": round(med["streaming"] / med["tensors"], 3),
    }


# --------------------------------------------------------------------------- (b) epoch + peak memory


def epoch_stage(corpus: dict, size: dict) -> dict:
    """Load (timed), one epoch, one validation pass, peak RSS: run in a fresh process."""
    import torch

    from atr_core.training.loop import TrainConfig, evaluate, train_epoch
    from atr_core.training.losses import MaxMarginRankingLoss

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    sources, wv = load_sources(corpus)
    load_s = time.perf_counter() - t0
    model, optimizer = build(size, wv)
    cfg = TrainConfig(epochs=1, batch_size=size["batch"], progress=False)
    loss_fn = MaxMarginRankingLoss(0.2)
    t0 = time.perf_counter()
    rec = train_epoch(model, sources["train"], optimizer, loss_fn, torch.device("cpu"), 1, cfg)
    epoch_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    val = evaluate(model, sources["val"], torch.device("cpu"), loss_fn)
    val_s = time.perf_counter() - t0
    return {
        "train_clips": len(sources["train"]), "val_clips": len(sources["val"]),
        "store_mb": round(sources["train"].segments.nbytes / 1e6, 1),
        "store_formula": "sum(min(T, max_segments)) x dim x 2 bytes",
        "val_store_mb": round(sources["val"].segments.nbytes / 1e6, 1),
        "load_s": round(load_s, 2), "epoch_s": round(epoch_s, 2), "validation_s": round(val_s, 2),
        "train_clips_per_s": round(rec["train_clips"] / epoch_s, 2), "train_loss": rec["train_loss"],
        "val_t2a_R10": val["metrics"]["t2a"]["R10"],
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "peak_rss_mb_at_start": round(rss0 / 1024, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


# --------------------------------------------------------------------------- main


def machine() -> dict:
    """Where this ran."""
    import torch

    return {**machine_basics(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke run); results to train_quick.json")
    p.add_argument("--workdir", default=None, help="where to write the corpus (default: a temporary dir)")
    p.add_argument("--output", default=None, help="results JSON (default bench/results/train[_quick].json)")
    p.add_argument("--stage", choices=("all", "epoch"), default="all", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    size = QUICK if args.quick else FULL
    if args.stage == "epoch":  # child process: corpus already written
        corpus = json.loads(Path(args.workdir, "corpus.json").read_text())
        print(json.dumps(epoch_stage(corpus, size)))
        return 0
    with tempfile.TemporaryDirectory(prefix="atr-bench-train-") as tmp:
        work = Path(args.workdir or tmp)
        t0 = time.perf_counter()
        corpus = make_corpus(work, size)
        (work / "corpus.json").write_text(json.dumps(corpus))
        made_s = time.perf_counter() - t0
        cmd = [sys.executable, __file__, "--stage", "epoch", "--workdir", str(work)]
        cmd += ["--quick"] * args.quick
        child = subprocess.run(cmd, capture_output=True, text=True, check=True)
        epoch = json.loads(child.stdout.strip().splitlines()[-1])
        tp = throughput(corpus, size)
    result = {
        "benchmark": "train", "quick": args.quick, "size": size, "machine": machine(),
        "corpus_write_s": round(made_s, 2), "throughput": tp, "epoch": epoch,
        "pass_ratio_ge_0.9": tp["ratio_loader_vs_tensors"] >= 0.9,
    }
    out = Path(args.output) if args.output else RESULTS / ("train_quick.json" if args.quick else "train.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"throughput": tp, "epoch": epoch}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

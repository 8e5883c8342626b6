"""Learning on real recordings: held-out retrieval of the default recipe, over seeds, beside controls.

    python bench/bench_learning.py                 # the recorded grid (about 2 hours on 2 cores)
    python bench/bench_learning.py --only lms      # a subset: runs whose name contains "lms"
    OMP_NUM_THREADS=1 python bench/bench_learning.py --only s1 &   # two at once, one core each

For each run: build the real-sound corpus (``pipelines.corpus``, seed 0), extract its features once
per feature set (``pipelines.extract``, LMS or CNN14 with ``random:0`` weights), train with the
default recipe (``pipelines.train``; only ``--word2vec`` and ``--seed`` given), and evaluate the
selected model on the held-out evaluation split. Controls train on the development captions moved
to other clips (``write_shuffled_captions``), so nothing true can be learnt: they must stay near
chance. Every command is the one a user runs. Results are appended to
``bench/results/learning.json`` as each run finishes (a rerun skips finished runs), and the table
for docs/benchmarks.md is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchutil import machine_basics  # noqa: E402

RESULTS = REPO / "bench" / "results" / "learning.json"
SPLITS = {"train": "development", "val": "validation", "test": "evaluation"}

#: (name, corpus clips, features, word vectors, seed, control), in the order they run.
GRID = [
    *[(f"c310-lms-w2v-s{s}", 310, "lms", "train:100", s, False) for s in (0, 1, 2)],
    ("c310-lms-w2v-s0-control", 310, "lms", "train:100", 0, True),
    *[(f"c310-cnn14r-w2v-s{s}", 310, "cnn14", "train:100", s, False) for s in (0, 1, 2)],
    ("c310-cnn14r-w2v-s0-control", 310, "cnn14", "train:100", 0, True),
    ("c150-lms-w2v-s0", 150, "lms", "train:100", 0, False),
    ("c310-lms-glove-s0", 310, "lms", "glove", 0, False),
    *[(f"c310-lms-w2v-s{s}-control", 310, "lms", "train:100", s, True) for s in (1, 2)],
    ("c150-cnn14r-w2v-s0", 150, "cnn14", "train:100", 0, False),
    ("c1000-lms-w2v-s0", 1000, "lms", "train:100", 0, False),
    ("c5000-lms-w2v-s0", 5000, "lms", "train:100", 0, False),
    ("c310-cnn14r-glove-s0", 310, "cnn14", "glove", 0, False),
]


def sh(args: list[str], log: Path) -> float:
    """Run a command (repo root, output to ``log``); return its wall time; raise on failure."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(args, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args[:4])} ... failed ({proc.returncode}); see {log}")
    return time.perf_counter() - t0


def corpus(work: Path, clips: int) -> Path:
    out = work / f"corpus{clips}"
    if not (out / "corpus.json").exists():
        sh([sys.executable, "-m", "pipelines.corpus", "build", str(out), "--clips", str(clips),
            "--no_progress"], work / f"corpus{clips}.log")
    return out


def features(work: Path, clips: int, feature: str) -> tuple[Path, float | None]:
    out = work / f"features{clips}-{feature}"
    if (out / "done").exists():
        return out, None
    args = [sys.executable, "-m", "pipelines.extract", f"--input={corpus(work, clips) / 'audio' / '*'}",
            f"--output={out}", f"--features={feature}", "--overwrite"]
    if feature == "cnn14":
        args.append("--cnn14_checkpoint=random:0")
    seconds = sh(args, work / f"features{clips}-{feature}.log")
    (out / "done").write_text(f"{seconds:.1f}\n")
    return out, seconds


def heldout(segments: Path, corpus_dir: Path, run: Path) -> dict:
    """Held-out (evaluation split) metrics of the selected model, and the chance levels."""
    import torch

    from atr_core.evaluation.chance import chance_levels
    from atr_core.formats.manifest import read_manifest
    from atr_core.model.directory import load_model
    from atr_core.training.data import join_captions, load_split, scan_shards
    from atr_core.training.loop import evaluate

    model, config, wv = load_model(run)
    index = scan_shards(str(segments))
    entries = read_manifest(str(corpus_dir / "clotho_captions_evaluation.csv"), split="test")
    by_split, _ = join_captions(entries, index, ["test"])
    test = load_split(index, by_split["test"], wv, config.max_segments, config.max_words)
    result = evaluate(model, test, torch.device("cpu"))  # metrics and eval-mode spread, one encoding
    m, spread = result["metrics"], result["spread"]
    keep = ("R1", "R5", "R10", "MedR", "MeanR")
    chance = chance_levels([len(e.captions) for e in by_split["test"]])
    return {
        "test_clips": len(test), "test_captions": test.n_captions,
        "t2a": {k: round(m["t2a"][k], 2) for k in keep}, "a2t": {k: round(m["a2t"][k], 2) for k in keep},
        "chance": {d: {k: round(chance[d][k], 2) for k in keep} for d in ("t2a", "a2t")},
        "spread": {side: round(spread[side], 4) for side in ("text", "audio")},
    }


def run_one(work: Path, name: str, clips: int, feature: str, vectors: str, seed: int, control: bool) -> dict:
    corpus_dir = corpus(work, clips)
    segments, extract_s = features(work, clips, feature)
    captions = [str(corpus_dir / f"clotho_captions_{s}.csv") for s in ("development", "validation")]
    if control:
        from atr_core.corpus.build import write_shuffled_captions

        shuffled = write_shuffled_captions(captions[0], work / f"{name}-shuffled.csv", seed)
        captions[0] = f"train={shuffled}"
    if vectors == "glove":
        from atr_core.text.glove import export_packaged_glove

        vectors = str(export_packaged_glove(work / "glove"))
    out = work / name
    train_s = sh([sys.executable, "-m", "pipelines.train", f"--segments={segments}", "--captions",
                  *captions, f"--word2vec={vectors}", f"--seed={seed}", f"--output={out}", "--overwrite",
                  "--no_progress"], work / f"{name}.log")
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    best = next(r for r in reversed(history) if r["best"])
    row = {"name": name, "clips": clips, "feature": feature, "word_vectors": vectors.rsplit("/", 1)[-1],
           "seed": seed, "control": control, "epochs": len(history), "best_epoch": best["epoch"],
           "train_s": round(train_s, 1), "extract_s": extract_s}
    row.update(heldout(segments, corpus_dir, out))
    return row


def table(rows: list[dict]) -> str:
    """Markdown: one line per group (mean ± std over seeds), t2a and a2t R@1/5/10, chance."""
    import numpy as np

    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["name"].rsplit("-s", 1)[0] + ("-control" if r["control"] else ""), []).append(r)
    out = ["| corpus | features | word vectors | runs | t2a R@1 | t2a R@5 | t2a R@10 | a2t R@1 | a2t R@5 "
           "| a2t R@10 | chance R@10 (t2a / a2t) | R@10 / chance |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for rs in groups.values():
        def cell(d, k, rs=rs):
            v = np.array([r[d][k] for r in rs])
            return f"{v.mean():.1f} ± {v.std():.1f}" if len(v) > 1 else f"{v[0]:.1f}"
        r0 = rs[0]
        feat = {"lms": "LMS", "cnn14": "CNN14, random weights"}[r0["feature"]]
        feat += " — **shuffled control**" if r0["control"] else ""
        ratio = np.mean([r["t2a"]["R10"] for r in rs]) / r0["chance"]["t2a"]["R10"]
        cells = " | ".join(cell(d, k) for d in ("t2a", "a2t") for k in ("R1", "R5", "R10"))
        out.append(f"| {r0['clips']} ({r0['test_clips']} held out) | {feat} | {r0['word_vectors']} "
                   f"| {len(rs)} "
                   f"| {cells} | {r0['chance']['t2a']['R10']:.1f} / {r0['chance']['a2t']['R10']:.1f} "
                   f"| {ratio:.1f}x |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="/tmp/atr-bench-learning", help="working directory (corpora, runs)")
    p.add_argument("--only", default=None, help="run only grid entries whose name contains this")
    p.add_argument("--table", action="store_true", help="only print the table of the recorded results")
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"runs": []}
    done = {r["name"] for r in data["runs"]}
    for name, clips, feature, vectors, seed, control in [] if args.table else GRID:
        if name in done or (args.only and args.only not in name):
            continue
        print(f"run {name} ...", flush=True)
        row = run_one(work, name, clips, feature, vectors, seed, control)
        print(f"  t2a R@10 {row['t2a']['R10']} (chance {row['chance']['t2a']['R10']}), "
              f"a2t R@10 {row['a2t']['R10']}, train {row['train_s']} s", flush=True)
        data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"runs": []}  # others may append
        data["runs"].append(row)
        data["machine"] = machine_basics()
        data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    print(table(data["runs"]))


if __name__ == "__main__":
    main()

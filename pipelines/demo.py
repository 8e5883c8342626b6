"""End-to-end demo: make a small captioned corpus, extract, train, embed/evaluate and search.

    python -m pipelines.demo --output out/demo --cnn14_checkpoint=random:0

Every stage is the real command (pipelines.extract, .train, .embed, .search) on the embedded local
runner; only the data is synthetic (tones, rhythms and noises whose captions name them, made by
atr_core.synthetic). With ``random:SEED`` CNN14 has untrained weights, asked for by name: the numbers
say the pipeline works, not how good the paper's model is. Give the official Cnn14_mAP=0.431.pth
instead to extract real features.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from atr_core.errors import AtrError, OutputExistsError
from atr_core.synthetic import write_corpus
from pipelines.common import DEFAULT_LOCAL_RUNNER, run_cli


def build_parser() -> argparse.ArgumentParser:
    """The demo's command-line options."""
    p = argparse.ArgumentParser(
        prog="python -m pipelines.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--output", required=True, help="directory for the corpus and every stage's output")
    p.add_argument(
        "--cnn14_checkpoint",
        required=True,
        help="Cnn14_mAP=0.431.pth (local, gs:// or https://) or random:SEED for untrained weights",
    )
    p.add_argument("--features", default="cnn14", choices=["cnn14", "lms"], help="segment features")
    p.add_argument("--clips", type=int, default=72, help="clips in the synthetic corpus (3/4 train)")
    p.add_argument("--seconds", type=float, default=3.0, help="clip length in seconds")
    p.add_argument("--epochs", type=int, default=12, help="training epochs (the paper: 20)")
    p.add_argument("--query", default="a high pitched beeping tone over white noise", help="search query")
    p.add_argument("--overwrite", action="store_true", help="replace an existing demo output")
    return p


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the four stages; return (and print) where their outputs went."""
    from pipelines import embed, extract, search, train

    args = build_parser().parse_args(argv)
    out = Path(args.output)
    if out.exists() and any(out.iterdir()):
        if not args.overwrite:
            raise OutputExistsError(f"{out} is not empty; pass --overwrite to replace the demo output")
        shutil.rmtree(out)
    if args.cnn14_checkpoint.startswith("random:") and args.features == "cnn14":
        print(f"NOTE: CNN14 weights are random ({args.cnn14_checkpoint}), as asked; features are untrained.")
    t0 = time.perf_counter()
    manifest = write_corpus(out / "corpus", args.clips, seconds=args.seconds, seed=0)
    runner = f"--runner={DEFAULT_LOCAL_RUNNER}"
    segments, model, vectors = out / "segments", out / "model", out / "vectors"

    print("== 1/4 extract", flush=True)
    extract.run(
        [
            f"--captions={manifest}",
            f"--audio_root={manifest.parent / 'audio'}",
            f"--output={segments}",
            f"--features={args.features}",
            f"--cnn14_checkpoint={args.cnn14_checkpoint}",
            runner,
        ]
    )
    print("== 2/4 train", flush=True)
    code = train.main(
        [
            f"--segments={segments}",
            "--captions",
            str(manifest),
            "--word2vec=train:64",
            f"--epochs={args.epochs}",
            "--batch_size=16",
            f"--output={model}",
            "--no_progress",
        ]
    )
    if code:
        raise AtrError(f"training failed (exit code {code}); see the message above")
    print("== 3/4 embed and evaluate", flush=True)
    embed.run(
        [
            f"--segments={segments}",
            "--captions",
            str(manifest),
            "--model",
            str(model),
            f"--output={vectors}",
            runner,
        ]
    )
    print("== 4/4 search", flush=True)
    model_vectors = next(p for p in vectors.iterdir() if p.is_dir())
    search.main(["--vectors", str(model_vectors), "--model", str(model), args.query])

    where = {
        "corpus": str(manifest),
        "segment_shards": str(segments),
        "model": str(model),
        "vectors_and_reports": str(vectors),
        "reports": sorted(str(p) for p in vectors.rglob("report.html")),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(where, indent=2))
    return where


if __name__ == "__main__":
    from pipelines import demo as _module

    sys.exit(run_cli(_module.main, "demo"))

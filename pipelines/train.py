"""Train the audio-text retrieval model on segment shards and captions (not a Beam job).

    python -m pipelines.train --segments 'feats/*.parquet' \\
        --captions clotho_captions_development.csv clotho_captions_validation.csv \\
        --word2vec GoogleNews-vectors-negative300.bin --output runs/clotho

Defaults reproduce the paper (reference.md sections 3-7): NetRVLAD on both sides, Ranger lr 0.01,
weight decay 1e-3, StepLR x0.95 per epoch, 20 epochs, 128 clips per batch, seed 0, the segment
cap of the dataset (31 AudioCaps / 90 Clotho), best epoch by validation t2a geometric mean of
R@1/5/10. See docs/train.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
from collections.abc import Callable, Sequence

from atr_core import __version__
from atr_core.errors import InputError
from atr_core.formats.manifest import FORMATS, ClipEntry, detect_format, infer_split, read_manifest
from atr_core.model.aggregation import AGGREGATIONS
from atr_core.model.directory import CONFIG_FILE, MODEL_FILE, WORD_VECTORS_DIR, save_model
from atr_core.model.retrieval import ModelConfig, RetrievalModel
from atr_core.runtime.checks import check_at_least_one
from atr_core.runtime.device import resolve_device
from atr_core.runtime.storage import open_uri
from atr_core.text.word_vectors import (
    MAX_WORDS,
    WordVectors,
    load_word_vectors,
    train_dim,
    train_word_vectors,
)
from atr_core.training.data import (
    DEFAULT_SHUFFLE_BUFFER,
    default_max_segments,
    join_captions,
    load_split,
    scan_shards,
)
from atr_core.training.loop import (
    BN_STATS,
    CHECKPOINT_FILE,
    CURVES_FILE,
    DATA_FILE,
    METRICS_FILE,
    PAPER_BATCH,
    PAPER_EPOCHS,
    RUN_FILE,
    RUN_KIND,
    RunDir,
    TrainConfig,
    TrainResult,
    atomic_write_bytes,
    fit,
    prepare_output,
    resolve_schedule,
    seed_everything,
)
from atr_core.training.optim import OPTIMIZERS, build_optimizer
from pipelines.common import exit_process, run_cli

log = logging.getLogger(__name__)

PROG = "python -m pipelines.train"
#: Files of a run: a directory holding any of them holds a run (refused without --resume/--overwrite).
RUN_FILES = (
    RUN_FILE, CHECKPOINT_FILE, METRICS_FILE, CURVES_FILE, DATA_FILE,
    MODEL_FILE, CONFIG_FILE, WORD_VECTORS_DIR,
)
#: Test hook: the process kills itself (SIGKILL) right after finishing this epoch's files.
KILL_AFTER_EPOCH_ENV = "ATR_TRAIN_KILL_AFTER_EPOCH"


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (``--help`` documents every one)."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.split("\n\n")[0],
        epilog="Defaults reproduce the paper; options that depart from it say so.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d = p.add_argument_group("data")
    d.add_argument(
        "--segments", required=True,
        help="segment shards (extract pipeline output): a .parquet file, a directory or a glob, "
        "local or gs://",
    )
    d.add_argument(
        "--captions", required=True, nargs="+", metavar="[SPLIT=]PATH",
        help="captions files (Clotho CSV, AudioCaps CSV or JSON Lines), local or gs://: one per split "
        "(split from SPLIT=, else from the file name, e.g. *_development.csv -> train), or one file "
        "with a split field (JSONL)",
    )
    d.add_argument("--captions_format", default="auto", choices=FORMATS, help="format of the captions files")
    d.add_argument("--train_split", default="train", help="split to train on")
    d.add_argument("--val_split", default="val", help="split to validate on every epoch (model selection)")
    d.add_argument(
        "--dataset", default="auto", choices=("auto", "clotho", "audiocaps"),
        help="dataset whose segment cap applies; auto: from the captions format (JSONL: unknown)",
    )
    d.add_argument(
        "--max_segments", type=int, default=None,
        help="segment cap T (later segments are dropped); default: 90 for Clotho, 31 for AudioCaps, "
        "otherwise the longest clip but at most 90",
    )
    d.add_argument("--max_words", type=int, default=MAX_WORDS, help="words per caption (truncate / pad)")
    d.add_argument(
        "--streaming", action="store_true",
        help="stream the shards every epoch through a shuffle buffer instead of holding all segments in "
        "memory (for corpora larger than memory; approximate shuffle, departs from the paper)",
    )
    d.add_argument(
        "--shuffle_buffer", type=int, default=DEFAULT_SHUFFLE_BUFFER,
        help="clips in the streaming shuffle buffer (memory: clips x max_segments x dim x 2 bytes)",
    )
    t = p.add_argument_group("text")
    t.add_argument(
        "--word2vec", required=True,
        help="word2vec file (binary or text, optionally .gz; local, gs:// or https://), e.g. "
        "GoogleNews-vectors-negative300.bin; or train:DIM to train DIM-d vectors on the training "
        "captions (departs from the paper)",
    )
    t.add_argument("--word2vec_sha256", default=None, help="expected sha256 of the word2vec file")
    m = p.add_argument_group("model")
    m.add_argument("--aggregation", default="netrvlad", choices=AGGREGATIONS, help="pooling on both sides")
    m.add_argument("--embed_dim", type=int, default=2048, help="shared embedding size")
    m.add_argument("--audio_clusters", type=int, default=12, help="NetRVLAD/NetVLAD clusters, audio side")
    m.add_argument("--text_clusters", type=int, default=20, help="NetRVLAD/NetVLAD clusters, text side")
    m.add_argument("--lstm_hidden", type=int, default=2048, help="LSTM hidden size (--aggregation lstm)")
    m.add_argument(
        "--unmasked", action="store_true",
        help="the authors' unmasked NetRVLAD/NetVLAD/max pooling (padding enters BatchNorm statistics)",
    )
    o = p.add_argument_group("optimisation")
    o.add_argument(
        "--optimizer", default="ranger", choices=OPTIMIZERS,
        help="ranger = RAdam + Lookahead (k 6, alpha 0.5, betas 0.95/0.999, eps 1e-5, decoupled weight "
        "decay scaled by lr), the paper's; adam departs from it",
    )
    o.add_argument("--lr", type=float, default=0.01, help="learning rate")
    o.add_argument("--weight_decay", type=float, default=1e-3, help="weight decay")
    o.add_argument(
        "--lr_gamma", type=float, default=None,
        help="StepLR factor, applied once per epoch; default 0.95 ** (20 / epochs): the paper's 0.95 for "
        "20 epochs, and the same total decay over a longer small-corpus schedule",
    )
    o.add_argument(
        "--epochs", type=int, default=None,
        help="epochs (may be raised on --resume); default: the paper's 20, or enough for 600 optimizer "
        "steps on a small training set (departs from the paper below ~3,800 clips; docs/train.md)",
    )
    o.add_argument(
        "--batch_size", type=int, default=None,
        help="clips per batch (each with all its captions); default: the paper's 128, or for fewer than "
        "~550 training clips the power of two nearest to clips / 6 (at least 16)",
    )
    o.add_argument(
        "--bn_stats", default="precise", choices=BN_STATS,
        help="BatchNorm statistics for evaluation: precise = recomputed over the training set after every "
        "epoch (project decision: the running averages lag and collapse eval-mode embeddings on small "
        "data); running = PyTorch's running averages (the authors')",
    )
    o.add_argument("--margin", type=float, default=0.2, help="max-margin ranking loss margin")
    o.add_argument("--seed", type=int, default=0, help="seed of python, numpy, torch and the data order")
    r = p.add_argument_group("run")
    r.add_argument("--output", required=True, help="output directory, local or gs://")
    r.add_argument(
        "--resume", action="store_true",
        help="continue the run in --output after its last finished epoch (a fresh run if there is none)",
    )
    r.add_argument("--overwrite", action="store_true", help="replace a run already in --output")
    r.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: cuda if available"
    )
    r.add_argument("--eval_batch_size", type=int, default=256, help="clips per batch when validating")
    r.add_argument(
        "--checkpoint_interval", type=float, default=300.0,
        help="seconds between checkpoints (model + optimizer state, ~1 GB for the paper's model; a killed "
        "run resumes from the last one); 0: after every epoch. The last epoch always writes one",
    )
    r.add_argument("--no_progress", action="store_true", help="no tqdm progress bars")
    p.add_argument("--version", action="version", version=f"atr {__version__}")
    return p


def parse_captions_spec(spec: str) -> tuple[str | None, str]:
    """``SPLIT=PATH`` -> (split, path); a plain path -> (None, path)."""
    head, sep, tail = spec.partition("=")
    if sep and head and "/" not in head and ":" not in head:
        return head, tail
    return None, spec


def read_captions(specs: Sequence[str], fmt: str) -> tuple[list[ClipEntry], str | None]:
    """All clip entries of the captions files, and the dataset their format names (None for JSONL)."""
    entries: list[ClipEntry] = []
    kinds = set()
    for spec in specs:
        split, path = parse_captions_spec(spec)
        entries.extend(read_manifest(path, fmt=fmt, split=split))
        if fmt == "auto":
            with open_uri(path) as f:
                head = f.read(1 << 16).decode("utf-8-sig", errors="replace")
            kinds.add(detect_format(head, path))
        else:
            kinds.add(fmt)
    kinds.discard("jsonl")
    return entries, (kinds.pop() if len(kinds) == 1 else None)


def get_word_vectors(spec: str, sha256: str | None, train_captions: list[str], seed: int) -> WordVectors:
    """Load a word2vec file, or train ``train:DIM`` vectors on the training captions."""
    dim = train_dim(spec)
    if dim is None:
        return load_word_vectors(spec, sha256=sha256)
    log.info("training %d-d word vectors on %d training captions (train:%d)", dim, len(train_captions), dim)
    return train_word_vectors(train_captions, dim, seed=seed)


def kill_hook() -> Callable[[dict], None] | None:
    """The ``ATR_TRAIN_KILL_AFTER_EPOCH`` test hook (simulates a crash after an epoch), if set."""
    raw = os.environ.get(KILL_AFTER_EPOCH_ENV)
    if not raw:
        return None
    stop = int(raw)

    def hook(rec: dict) -> None:
        if rec["epoch"] == stop:
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def train(args: argparse.Namespace) -> TrainResult:
    """Run the training job described by parsed ``args``; raises :class:`AtrError` on bad input."""
    check_at_least_one(
        args, ("max_words", "epochs", "batch_size", "eval_batch_size", "shuffle_buffer", "max_segments")
    )
    device = resolve_device(args.device)
    train_split, val_split = infer_split(explicit=args.train_split), infer_split(explicit=args.val_split)
    if train_split == val_split:
        raise InputError(f"--train_split and --val_split are both {train_split!r}")

    entries, detected = read_captions(args.captions, args.captions_format)
    dataset = detected if args.dataset == "auto" else args.dataset
    index = scan_shards(args.segments)
    by_split, report = join_captions(entries, index, [train_split, val_split])
    for line in report.lines():
        log.info("join: %s", line)
    for split in (train_split, val_split):
        if len(by_split[split]) < 2:
            raise InputError(
                f"{args.segments}: split {split!r} has {len(by_split[split])} clips with captions and "
                f"segments; at least 2 are needed (captions: {', '.join(args.captions)})"
            )
    used = by_split[train_split] + by_split[val_split]
    max_segments = args.max_segments or default_max_segments(
        dataset, max(index.num_segments[e.audio_id] for e in used)
    )
    train_captions = [c for e in by_split[train_split] for c in e.captions]
    wv = get_word_vectors(args.word2vec, args.word2vec_sha256, train_captions, args.seed)
    config = ModelConfig(
        audio_dim=index.dim, text_dim=wv.dim, embed_dim=args.embed_dim, aggregation=args.aggregation,
        audio_clusters=args.audio_clusters, text_clusters=args.text_clusters, lstm_hidden=args.lstm_hidden,
        max_segments=max_segments, max_words=args.max_words, use_mask=not args.unmasked,
        feature=index.identity.feature, checkpoint_sha256=index.identity.checkpoint_sha256,
        word_vectors=dict(wv.identity),
    )
    schedule = resolve_schedule(len(by_split[train_split]), args.batch_size, args.epochs, args.lr_gamma)
    if schedule.auto:
        log.info(
            "schedule for %d training clips: %d clips per batch, %d epochs, lr x%.4f per epoch (%s)",
            len(by_split[train_split]), schedule.batch_size, schedule.epochs, schedule.lr_gamma,
            "the paper's" if (schedule.batch_size, schedule.epochs) == (PAPER_BATCH, PAPER_EPOCHS)
            else f"automatic: {', '.join(schedule.auto)}; stretched for a small training set, docs/train.md",
        )
    cfg = TrainConfig(
        epochs=schedule.epochs, batch_size=schedule.batch_size, optimizer=args.optimizer, lr=args.lr,
        weight_decay=args.weight_decay, lr_gamma=schedule.lr_gamma, margin=args.margin, seed=args.seed,
        eval_batch_size=args.eval_batch_size, progress=not args.no_progress, bn_stats=args.bn_stats,
        checkpoint_interval_s=args.checkpoint_interval,
    )
    run_info = {
        "kind": RUN_KIND,
        "schema_version": 1,
        "model": config.to_dict(),
        "train": cfg.to_dict(),
        "data": {
            "segments": args.segments, "captions": list(args.captions), "dataset": dataset,
            "train_split": train_split, "val_split": val_split, "streaming": args.streaming,
            "shuffle_buffer": args.shuffle_buffer if args.streaming else None,
            "train_clips": len(by_split[train_split]), "val_clips": len(by_split[val_split]),
        },
    }
    run = RunDir(args.output)
    resume = prepare_output(run, run_info, RUN_FILES, args.resume, args.overwrite)
    atomic_write_bytes(run.path(RUN_FILE), _json(run_info))
    atomic_write_bytes(run.path(DATA_FILE), _json(report.to_dict()))

    # With masking, padding never changes an embedding: pad batches only to their longest clip.
    load = lambda split: load_split(  # noqa: E731
        index, by_split[split], wv, max_segments, args.max_words, args.streaming, args.shuffle_buffer,
        pad_to_cap=args.unmasked,
    )
    train_src, val_src = load(train_split), load(val_split)
    log.info(
        "train %d clips / %d captions, val %d clips / %d captions; max_segments %d (%s), device %s",
        len(train_src), train_src.n_captions, len(val_src), val_src.n_captions, max_segments,
        dataset or "dataset unknown", device,
    )
    seed_everything(args.seed)
    model = RetrievalModel(config).to(device)
    optimizer = build_optimizer(cfg.optimizer, model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    result = fit(
        model, optimizer, train_src, val_src, run, cfg,
        save_best=lambda d: save_model(d, model, config, wv), device=device, resume=resume,
        on_epoch_end=kill_hook(),
    )
    log.info("best epoch %d (validation t2a geometric mean %.3f); model in %s",
             result.best_epoch, result.best_score, run)
    return result


def _json(obj: object) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse ``argv``, train, and turn errors into one line and exit code 2."""
    args = build_parser().parse_args(argv)
    for noisy in ("gensim", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return run_cli(lambda: train(args), "train")


if __name__ == "__main__":
    # the importable module's main: its logger is named pipelines.train, not __main__
    from pipelines import train as _module

    exit_process(_module.main())

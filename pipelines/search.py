"""Search the retrieval vectors written by ``pipelines.embed``.

    python -m pipelines.search --vectors out/seed0 --model runs/seed0 "a dog barks while rain falls"
    python -m pipelines.search --vectors out/seed0 --model runs/seed0 --audio query.wav --k 5 --json

A text query returns the top-k clips (audio -> captions with ``--audio``), best first, with their
cosine scores. An empty or entirely out-of-vocabulary query is an error (exit code 2). The same
search is available to programs as :class:`atr_core.search.searcher.Searcher`. See docs/search.md.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from atr_core.errors import QueryError
from atr_core.search.searcher import DEFAULT_K, AnnSpec, Hit, Searcher
from pipelines.common import exit_process, run_cli


def build_parser() -> argparse.ArgumentParser:
    """The parser behind ``python -m pipelines.search --help``."""
    p = argparse.ArgumentParser(
        prog="python -m pipelines.search",
        description="Text -> audio (or, with --audio, audio -> text) search over retrieval vectors.",
        epilog="See docs/search.md.",
    )
    p.add_argument("query", nargs="?", default=None, help="the text query (omit with --audio)")
    p.add_argument(
        "--vectors",
        required=True,
        help="vectors written by pipelines.embed: <output>/<model> (all splits) or <output>/<model>/<split>, "
        "a .parquet file or a glob; local or gs://",
    )
    p.add_argument("--model", required=True, help="the trained model directory the vectors were made with")
    p.add_argument("--audio", default=None, help="an audio file to search captions with (audio -> text)")
    p.add_argument("--k", type=int, default=DEFAULT_K, help=f"number of results (default {DEFAULT_K})")
    p.add_argument("--split", nargs="+", default=None, help="search only these splits (default: all)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument(
        "--word2vec",
        default=None,
        help="word vectors to use instead of the source recorded in the model (same identity required)",
    )
    p.add_argument(
        "--cnn14_checkpoint",
        default=None,
        help="CNN14 weights for --audio with cnn14 features (the ones the shards were made with)",
    )
    p.add_argument("--cnn14_sha256", default=None, help="expected sha256 of --cnn14_checkpoint")
    p.add_argument("--device", default="cpu", help="torch device for query embedding: auto, cpu or cuda")
    ann = p.add_argument_group("approximate search (optional; pip install 'atr[ann]')")
    ann.add_argument(
        "--ann",
        action="store_true",
        help="use a faiss index instead of exact search (built on first use and saved next to local "
        "vectors as ann-audio.faiss / ann-caption.faiss); worth it past about a million vectors",
    )
    ann.add_argument(
        "--ann_factory",
        default="auto",
        help="faiss index_factory string (default auto: IVF with ~sqrt(N) lists, flat storage)",
    )
    ann.add_argument("--nprobe", type=int, default=32, help="IVF lists probed per query (default 32)")
    return p


def format_hits(hits: Sequence[Hit], mode: str) -> str:
    """A plain-text table: rank, score, and the clip (text query) or the caption (audio query)."""
    if not hits:
        return "(no results)"
    lines = []
    for h in hits:
        where = f" [{h.split}]" if h.split else ""
        if mode == "text":
            lines.append(f"{h.rank:>3}  {h.score:+.4f}  {h.audio_id}{where}")
        else:
            lines.append(f"{h.rank:>3}  {h.score:+.4f}  {h.caption!r}  ({h.audio_id}{where})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[Hit]:
    """Run one search and print the results; returns the hits."""
    args = build_parser().parse_args(argv)
    if (args.query is None) == (args.audio is None):
        raise QueryError("give either a text query or --audio FILE (exactly one)")
    if args.k < 1:
        raise QueryError(f"--k must be >= 1, got {args.k}")
    if args.query is not None and not args.query.strip():
        raise QueryError("empty query: give some words to search for")
    ann = AnnSpec(factory=args.ann_factory, nprobe=args.nprobe) if args.ann else None
    searcher = Searcher.from_dirs(
        args.vectors,
        args.model,
        splits=args.split,
        word_vectors=args.word2vec,
        device=args.device,
        ann=ann,
        cnn14_checkpoint=args.cnn14_checkpoint,
        cnn14_sha256=args.cnn14_sha256,
    )
    if args.audio is not None:
        mode, query, hits = "audio", args.audio, searcher.search_audio(args.audio, args.k)
    else:
        mode, query, hits = "text", args.query, searcher.search_text(args.query, args.k)
    if args.json:
        out = {
            "mode": mode,
            "query": query,
            "k": args.k,
            "index": "ann" if ann else "exact",
            "results": [h.to_dict() for h in hits],
        }
        print(json.dumps(out, ensure_ascii=False, indent=1))
    else:
        print(format_hits(hits, mode))
    return hits


if __name__ == "__main__":
    exit_process(run_cli(main, "search"))

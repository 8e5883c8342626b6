"""Build the real-sound demo corpus: packaged recordings composed into captioned clips (Clotho layout).

    python -m pipelines.corpus build out/corpus --clips 310 --seed 0

The recordings come from Debian packages (Tux Paint's stamp sounds: animals, household objects,
tools, vehicles, instruments and speech in 18 languages; the TimGM6mb SoundFont's sampled
instruments), fetched with ``apt-get download`` and unpacked into the atr cache when they are not
installed. Each clip puts one or two recordings together (repeated fast or slow, over a background,
in sequence; an instrument playing a pattern; someone counting or speaking) and gets five captions
that say what is heard. Splits are stratified, 60/20/20 by default: ``clotho_captions_{development,
validation,evaluation}.csv`` (Clotho's caption layout) with the audio of all splits in ``audio/``:
``pipelines.extract --input 'DEST/audio/*'`` extracts the whole corpus in one run, and
``pipelines.train --captions`` reads the CSVs as Clotho. The same seed gives the same corpus.
Sources and licences: docs/corpus.md.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from pipelines.common import exit_process, run_cli


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (``--help``)."""
    p = argparse.ArgumentParser(
        prog="python -m pipelines.corpus", description=__doc__.split("\n\n")[0],
        epilog="See docs/corpus.md.", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="compose the corpus into a directory",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    b.add_argument("dest", help="output directory (Clotho layout)")
    b.add_argument("--clips", type=int, default=310, help="number of clips (at least 10)")
    b.add_argument("--seed", type=int, default=0, help="seed of the composition and the splits")
    b.add_argument(
        "--fractions", type=float, nargs=3, default=(0.6, 0.2, 0.2), metavar=("DEV", "VAL", "EVAL"),
        help="development / validation / evaluation fractions",
    )
    b.add_argument(
        "--sources", default=None,
        help="a directory holding the packages' unpacked usr/share trees (default: installed packages, "
        "else apt-get download into the atr cache)",
    )
    b.add_argument("--overwrite", action="store_true", help="replace a corpus already in DEST")
    b.add_argument("--no_progress", action="store_true", help="no progress bar")
    sub.add_parser(
        "fetch", help="only fetch and unpack the source packages into the atr cache (for offline use later)"
    )
    return p


def main(argv: Sequence[str] | None = None) -> dict:
    """Build the corpus; print and return its description."""
    from atr_core.corpus import build_corpus

    args = build_parser().parse_args(argv)
    if args.command == "fetch":
        from atr_core.corpus import locate_sources

        roots = {k: v.to_dict() for k, v in locate_sources().items()}
        print(json.dumps(roots, indent=2))
        return roots
    if args.clips < 10:
        from atr_core.errors import InputError

        raise InputError(f"--clips must be >= 10, got {args.clips}")
    info = build_corpus(
        args.dest, args.clips, seed=args.seed, fractions=tuple(args.fractions), sources=args.sources,
        overwrite=args.overwrite, progress=not args.no_progress,
    )
    print(json.dumps({k: info[k] for k in ("clips", "splits", "recipes", "seconds")}))
    print(f"corpus written to {args.dest}")
    return info


if __name__ == "__main__":
    from pipelines import corpus as _module

    exit_process(run_cli(lambda: _module.main(), "corpus"))

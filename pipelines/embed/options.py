"""Command-line options of the embed job (Beam runner options are accepted as well)."""

from __future__ import annotations

import argparse
import logging

from apache_beam.options.pipeline_options import PipelineOptions

from atr_core.evaluation import metrics
from atr_core.formats import manifest
from atr_core.runtime.device import DEVICES
from pipelines.common import OptionGroup, options_parser

LOG = logging.getLogger(__name__)


class EmbedOptions(PipelineOptions):
    """Options of the embedding pipeline (Beam runner options are accepted as well)."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        src = OptionGroup(parser.add_argument_group("inputs"))
        src.add_argument(
            "--segments",
            default=None,
            help="segment shards written by pipelines.extract: a .parquet file, a directory or a glob, "
            "local or gs:// (required)",
        )
        src.add_argument(
            "--captions",
            nargs="+",
            default=None,
            help="one or more captions files (Clotho CSV, AudioCaps CSV or JSON Lines); every clip they "
            "list is embedded and evaluated within its split (required)",
        )
        src.add_argument(
            "--split",
            nargs="+",
            default=None,
            help="split of the captions files: one name for all, or one per --captions file "
            "(train/val/test or development/validation/evaluation); default: from the JSONL 'split' "
            "field or the file name",
        )
        src.add_argument(
            "--captions_format",
            default="auto",
            choices=manifest.FORMATS,
            help="format of the --captions files (default: detected from the header / first line)",
        )
        src.add_argument(
            "--model",
            nargs="+",
            default=None,
            help="one or more trained model directories (pipelines.train --output; local or gs://). "
            "Several directories (e.g. seeds) also give an aggregate report with mean +- std (required)",
        )
        src.add_argument(
            "--word2vec",
            default=None,
            help="word vectors to use instead of the source recorded in the model config (a word2vec "
            "file, local/gs:///https://, or a saved word-vectors directory); must have the recorded "
            "identity (sha256, vocabulary size, dim)",
        )
        out = OptionGroup(parser.add_argument_group("outputs"))
        out.add_argument(
            "--output",
            default=None,
            help="output directory (local or gs://): <output>/<model>/<split>/ vectors and report, "
            "<output>/<split>/ aggregate report with several models (required)",
        )
        out.add_flag(
            "--overwrite",
            help="replace vectors and reports already in --output (without it such an --output is refused)",
        )
        out.add_argument(
            "--examples",
            type=int,
            default=5,
            help="qualitative examples per direction in the report (sampled queries with their top 5; "
            "default 5, 0 for none)",
        )
        out.add_argument("--seed", type=int, default=0, help="seed for sampling report examples (default 0)")
        out.add_argument(
            "--rows_per_row_group",
            type=int,
            default=1024,
            help="vectors per Parquet row group (default 1024)",
        )
        run = OptionGroup(parser.add_argument_group("inference and ranking"))
        run.add_argument(
            "--device",
            default="auto",
            choices=DEVICES,
            help="torch device on the workers (auto: cuda when available, else cpu)",
        )
        run.add_argument(
            "--batch_size", type=int, default=64, help="max clips or captions per model batch (default 64)"
        )
        run.add_argument(
            "--block_size",
            type=int,
            default=metrics.DEFAULT_BLOCK_SIZE,
            help="captions per ranking block: each block is scored against all clips of its split on "
            f"one worker (memory ~ block_size x clips x 4 bytes; default {metrics.DEFAULT_BLOCK_SIZE})",
        )


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser behind ``python -m pipelines.embed --help``."""
    return options_parser(
        "python -m pipelines.embed",
        "Embed segment shards and captions with trained model(s), evaluate retrieval per split "
        "(the paper's R@1/5/10, MedR, MeanR) and write vectors plus a report.",
        EmbedOptions,
        epilog="Beam pipeline options are accepted too, e.g. --runner=DataflowRunner --project=... "
        "--region=... --temp_location=gs://... --setup_file=./setup.py (local default: "
        "--runner=FnApiRunner). See docs/embed.md.",
    )

"""ExtractOptions, the extraction job's flags (Beam runner options are accepted too), and its ``--help``."""

from __future__ import annotations

import argparse

from apache_beam.options.pipeline_options import PipelineOptions

from atr_core.audio import features
from atr_core.audio.cnn14 import OFFICIAL_URL
from atr_core.audio.decode import TARGET_SR
from atr_core.audio.windows import DEFAULT_MAX_BATCH_SAMPLES, DEFAULT_MAX_WINDOW_S
from atr_core.formats import manifest, shards
from pipelines.common import OptionGroup, options_parser


class ExtractOptions(PipelineOptions):
    """Options of the extraction pipeline (Beam runner options are accepted as well)."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        def group(title: str) -> OptionGroup:
            return OptionGroup(parser.add_argument_group(title))

        src = group("inputs (give --input, or --captions [+ --audio_root])")
        src.add_argument(
            "--input",
            default=None,
            help="glob of audio files, local or gs:// (Beam match syntax: '*' stays within one directory, "
            "'**' also crosses '/': 'data/**' is every file below data/, 'data/**/*.wav' needs a "
            "sub-directory). audio_id = path relative to the glob's non-wildcard root directory.",
        )
        src.add_argument(
            "--captions",
            default=None,
            help="captions/manifest file: Clotho v2.1 CSV, AudioCaps CSV or JSON Lines "
            "(see atr_core.formats.manifest). Every listed clip is processed; captions themselves "
            "are not used here.",
        )
        src.add_argument(
            "--audio_root",
            default=None,
            help="directory or gs:// prefix that manifest audio names are relative to "
            "(default: the directory holding --captions)",
        )
        src.add_argument(
            "--captions_format",
            default="auto",
            choices=manifest.FORMATS,
            help="format of --captions (default: detected from its header / first line)",
        )
        src.add_argument(
            "--audio_pattern",
            default=None,
            help="AudioCaps audio file name pattern over {youtube_id}, {start_time}, {audiocap_id} "
            f"(default: {manifest.DEFAULT_AUDIOCAPS_PATTERN!r})",
        )
        src.add_argument(
            "--split",
            default=None,
            help="split written to every row (train/val/test or development/validation/evaluation); "
            "default: from the manifest or the file/directory name, else empty",
        )
        out = group("outputs")
        out.add_argument(
            "--output",
            default=None,
            help="output directory (local or gs://) for segments-*.parquet, failures-*.jsonl and "
            "summary-<run>.json (required)",
        )
        out.add_flag(
            "--incremental",
            help="skip audio_ids already present in --output shards and write new shards under a "
            "run-specific name (without it, an --output that already holds shards is refused)",
        )
        out.add_argument(
            "--num_shards",
            type=int,
            default=0,
            help="number of segment shards (default 0: the runner decides, one per bundle); clips longer "
            "than --max_window_s get as many more, segments-long-*, when there are any. Shards are "
            "filled with whole row groups, so a shard can hold 0 rows when N exceeds the row groups",
        )
        out.add_argument(
            "--rows_per_row_group",
            type=int,
            default=64,
            help="clips per Parquet row group (one Arrow table per group; default 64)",
        )
        out.add_argument(
            "--run_id",
            default=None,
            help="name of this run in output file names (default: UTC time + random suffix)",
        )
        feat = group("features")
        feat.add_argument(
            "--features",
            default="cnn14",
            choices=sorted(features.FEATURES),
            help="cnn14 = PANNs CNN14 conv_block6 segment embeddings, 2048-d per 0.32 s (the paper); "
            "lms = 64-d log-mel (the paper's LMS baseline, needs no checkpoint)",
        )
        feat.add_argument(
            "--cnn14_checkpoint",
            default=None,
            help=f"CNN14 weights Cnn14_mAP=0.431.pth: local path, gs:// or https:// URL "
            f"(required for --features cnn14; official file: {OFFICIAL_URL.replace('%', '%%')}); "
            "'random:SEED' for tests",
        )
        feat.add_argument(
            "--cnn14_sha256", default=None, help="expected sha256 of --cnn14_checkpoint (checked when given)"
        )
        feat.add_argument(
            "--dtype",
            default="float16",
            choices=sorted(shards.DTYPES),
            help="storage dtype of embeddings (default float16; the model always runs in float32)",
        )
        run = group("inference")
        run.add_argument(
            "--device",
            default="auto",
            choices=("auto", "cpu", "cuda"),
            help="torch device on the workers (auto: cuda when available, else cpu)",
        )
        run.add_argument(
            "--batch_size", type=int, default=8, help="max clips (windows) per model batch (default 8)"
        )
        run.add_argument(
            "--max_batch_audio_s",
            type=float,
            default=DEFAULT_MAX_BATCH_SAMPLES / TARGET_SR,
            help="max total audio seconds per model batch; bounds activation memory (default %(default)g). "
            "A single window longer than this runs alone",
        )
        run.add_argument(
            "--max_window_s",
            type=float,
            default=DEFAULT_MAX_WINDOW_S,
            help=f"clips longer than this are split into overlapping windows and stitched back exactly "
            f"(default {DEFAULT_MAX_WINDOW_S:g} s, at least 4.16 s); bounds memory for long files",
        )
        run.add_flag(
            "--no_channels_last",
            dest="channels_last",
            invert=True,
            help="do not convert the CNN to channels_last memory format (on by default; faster on CPU)",
        )
        run.add_flag(
            "--compile",
            help="torch.compile the model (faster steady state, ~30 s compile per new input shape)",
        )
        run.add_argument(
            "--num_threads", type=int, default=0, help="torch intra-op threads per worker (0 = torch default)"
        )
        run.add_flag(
            "--no_retain_memory",
            dest="retain_memory",
            invert=True,
            help="leave glibc malloc's defaults alone on CPU workers (by default freed memory is kept "
            "for reuse: ~10%% faster CNN14 batches, a few hundred MB more resident)",
        )
        run.add_argument(
            "--decode_threads",
            type=int,
            default=0,
            help="audio decoding threads per worker (0 = the CPU count, at most 8)",
        )
        run.add_argument(
            "--decode_ahead",
            type=int,
            default=0,
            help="files decoded ahead of the model while it runs (0 = the larger of 2 x --decode_threads "
            "and --batch_size); each holds its 32 kHz waveform until used (77 MB for 10 minutes)",
        )
        run.add_flag(
            "--no_idle_decode",
            dest="idle_decode",
            invert=True,
            help="run the decode threads at normal priority (by default they run at idle priority on "
            "Linux, using only the CPU time the model leaves free, and are raised while waited on)",
        )


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser behind ``python -m pipelines.extract --help``."""
    return options_parser(
        "python -m pipelines.extract",
        "Extract CNN14 (or log-mel) segment embeddings of audio files into Parquet shards.",
        ExtractOptions,
        epilog="Beam pipeline options are accepted too, e.g. --runner=DataflowRunner --project=... "
        "--region=... --temp_location=gs://... (local default: --runner=FnApiRunner). "
        "See docs/extract.md.",
    )

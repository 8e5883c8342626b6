"""Planning the extraction job: options, checkpoint, inputs and output are checked before any work."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from apache_beam.io.filesystems import FileSystems

from atr_core.audio import features
from atr_core.audio.cnn14 import CheckpointInfo
from atr_core.audio.decode import TARGET_SR
from atr_core.audio.windows import plan_windows
from atr_core.errors import ConfigMismatchError, InputError, OutputExistsError
from atr_core.formats import manifest, shards
from atr_core.formats.manifest import ClipEntry
from atr_core.runtime.checks import check_at_least_one
from atr_core.runtime.storage import absolute_uri, expand_glob
from pipelines.common import check_device
from pipelines.extract.options import ExtractOptions


@dataclass(frozen=True)
class Plan:
    """Everything decided before the pipeline is built (all validation happens here)."""

    opts: ExtractOptions
    output: str
    run_id: str
    identity: shards.ShardIdentity
    checkpoint: CheckpointInfo | None
    entries: list[ClipEntry] | None  # None for --input globs (matched on the workers)
    input_glob: str | None
    duplicate_positions: frozenset[int]
    existing_shards: tuple[str, ...]  # shards already in --output (--incremental); read on workers

    @property
    def name_tag(self) -> str:
        """Infix of output file names: empty, or ``-<run_id>`` for --incremental runs."""
        return f"-{self.run_id}" if self.opts.incremental else ""


def _default_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def _resolve_checkpoint(opts: ExtractOptions) -> CheckpointInfo | None:
    """The validated CNN14 checkpoint (fetched and sha256-checked here), or None for weightless features."""
    features.check_feature(opts.features)
    if opts.features != "cnn14":
        return None
    return features.resolve_checkpoint(opts.cnn14_checkpoint, sha256=opts.cnn14_sha256)


def max_window_samples(opts: ExtractOptions) -> int:
    """--max_window_s in samples at 32 kHz."""
    return max(1, int(round(opts.max_window_s * TARGET_SR)))


def _check_numbers(opts: ExtractOptions) -> None:
    check_at_least_one(opts, ("batch_size", "rows_per_row_group"))
    for name in ("max_window_s", "max_batch_audio_s"):
        if not getattr(opts, name) > 0:
            raise InputError(f"--{name} must be > 0, got {getattr(opts, name)}")
    try:  # a window too small for its context is refused by the planner itself
        plan_windows(max_window_samples(opts) + 1, max_window_samples(opts))
    except InputError as exc:
        raise InputError(f"--max_window_s {opts.max_window_s:g}: {exc}") from None
    if opts.decode_threads < 0:
        raise InputError(f"--decode_threads must be >= 0 (0 = the CPU count), got {opts.decode_threads}")
    if opts.decode_ahead < 0:
        raise InputError(f"--decode_ahead must be >= 0 (0 = automatic), got {opts.decode_ahead}")
    if opts.num_shards < 0:
        raise InputError(f"--num_shards must be >= 0, got {opts.num_shards}")


def _existing_segment_shards(output: str) -> list[str]:
    try:
        return expand_glob(f"{output}/segments*.parquet")
    except FileNotFoundError:
        return []


def _check_incremental_identity(old: list[str], identity: shards.ShardIdentity) -> None:
    """Existing shards must have been written with the same feature, dimension, dtype and weights."""
    try:
        shards.check_appendable(old, identity)
    except ConfigMismatchError as exc:
        raise ConfigMismatchError(f"--incremental: {exc}; write to another --output") from None


def _check_glob(pattern: str) -> None:
    try:
        found = FileSystems.match([pattern], limits=[1])[0].metadata_list
    except Exception as exc:  # noqa: BLE001 - Beam raises BeamIOError and friends
        raise InputError(f"--input {pattern}: cannot list files: {exc}") from None
    if not found:
        raise InputError(f"--input {pattern}: matches no files")


def plan_run(opts: ExtractOptions) -> Plan:
    """Validate options, checkpoint, inputs and output before anything runs or is written.

    Args:
        opts: the job's options.

    Returns:
        The :class:`Plan`: the output directory (absolute), the run id, the shard identity, the
        resolved checkpoint, the manifest entries (or the input glob), and what to skip.

    Raises:
        InputError: bad options, a manifest that cannot be read, a glob that matches nothing.
        CheckpointError: a missing checkpoint or a wrong sha256.
        OutputExistsError: ``--output`` already holds shards and ``--incremental`` is not given.
        ConfigMismatchError: ``--incremental`` over shards of another feature, dtype or checkpoint.
    """
    if bool(opts.input) == bool(opts.captions):
        raise InputError("give exactly one of --input (audio glob) or --captions (manifest file)")
    if not opts.output:
        raise InputError("--output is required (a directory, local or gs://)")
    _check_numbers(opts)
    check_device(opts, opts.device)
    checkpoint = _resolve_checkpoint(opts)  # first: a missing checkpoint fails before anything else
    identity = features.feature_identity(opts.features, checkpoint, dtype=opts.dtype)
    output = absolute_uri(opts.output).rstrip("/")
    entries, input_glob, dups = None, None, frozenset()
    if opts.captions:
        entries = manifest.read_manifest(
            opts.captions,
            audio_root=opts.audio_root,
            fmt=opts.captions_format,
            audio_pattern=opts.audio_pattern,
            split=opts.split,
        )
        _, dup_entries = manifest.split_duplicates(entries)
        dup_ids = {id(e) for e in dup_entries}
        dups = frozenset(i for i, e in enumerate(entries) if id(e) in dup_ids)
    else:
        input_glob = absolute_uri(opts.input)
        if opts.split:
            manifest.infer_split(explicit=opts.split)  # validate early
        _check_glob(input_glob)
    old = _existing_segment_shards(output)
    if old and not opts.incremental:
        raise OutputExistsError(
            f"{output}: already holds {len(old)} segment shard(s) (e.g. {old[0]}); use --incremental to add "
            "new clips to it, or choose another --output"
        )
    if old:
        _check_incremental_identity(old, identity)
    return Plan(
        opts=opts,
        output=output,
        run_id=opts.run_id or _default_run_id(),
        identity=identity,
        checkpoint=checkpoint,
        entries=entries,
        input_glob=input_glob,
        duplicate_positions=dups,
        existing_shards=tuple(old),
    )

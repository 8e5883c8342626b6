"""Helpers shared by the job entry points: local runner default, options, counters, summaries, errors."""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from atr_core.errors import AtrError

# Beam's in-process portable runner. The plain DirectRunner of Beam 2.77 first tries to
# download a Prism binary from GitHub; this default never downloads anything.
DEFAULT_LOCAL_RUNNER = "FnApiRunner"


@dataclass(frozen=True)
class BeamJob:
    """What differs between the Beam jobs; :func:`run_job` is the skeleton they share.

    ``plan`` validates the options and reads what the graph needs (before any work), ``build``
    adds the named transforms to a pipeline, ``summarize`` turns the finished job's counters into
    the summary dict (with a ``balanced`` flag), which ``write_summary`` stores and
    ``format_summary`` prints.
    """

    name: str
    namespace: str
    options: type
    build_parser: Callable[[], argparse.ArgumentParser]
    plan: Callable[[Any], Any]
    build: Callable[[Any, Any], object]
    summarize: Callable[[Any, dict[str, int], str], dict[str, Any]]
    write_summary: Callable[[Any, dict[str, Any]], str]
    format_summary: Callable[[dict[str, Any]], str]
    unbalanced: str = "counts do not balance"


DATAFLOW = "DataflowRunner"


def is_dataflow(options: Any) -> bool:
    """True when ``options`` name the DataflowRunner (by name or class path)."""
    from apache_beam.options.pipeline_options import StandardOptions

    runner = options.view_as(StandardOptions).runner
    name = runner if isinstance(runner, str) else type(runner).__name__ if runner else ""
    return name.rsplit(".", 1)[-1] == DATAFLOW


def check_runner(options: Any) -> None:
    """Refuse a Dataflow launch that cannot work, with one line, before any work.

    Raises:
        InputError: DataflowRunner without the ``gcp`` extra, or without a gs:// temp location,
            a project or a region.
    """
    from apache_beam.options.pipeline_options import GoogleCloudOptions

    from atr_core.errors import InputError

    if not is_dataflow(options):
        return
    try:
        import apache_beam.runners.dataflow.internal.apiclient  # noqa: F401
    except ImportError as exc:
        raise InputError(
            f"--runner={DATAFLOW} needs the gcp extra (pip install -e '.[gcp]'): {exc}"
        ) from exc
    gcp = options.view_as(GoogleCloudOptions)
    temp = gcp.temp_location or gcp.staging_location
    if not temp or not temp.startswith("gs://"):
        raise InputError(f"--runner={DATAFLOW} needs --temp_location=gs://BUCKET/tmp, got {temp!r}")
    for flag, value in (("project", gcp.project), ("region", gcp.region)):
        if not value:
            raise InputError(f"--runner={DATAFLOW} needs --{flag}")


#: Dataflow experiment: one SDK harness process per worker VM, so one model per GPU
ONE_PROCESS_PER_GPU = "no_use_multiple_sdk_containers"


def check_device(options: Any, device: str) -> None:
    """``--device cuda``: locally, CUDA must be visible now; on Dataflow, one SDK process per GPU.

    The launcher of a Dataflow job has no GPU, so there the workers fail at model loading (before
    any element) when their driver is missing; they never fall back to the CPU silently.

    Raises:
        InputError: a local run asks for CUDA where none is visible.
    """
    from apache_beam.options.pipeline_options import DebugOptions

    from atr_core.runtime.device import resolve_device

    if device != "cuda":
        return
    if not is_dataflow(options):
        resolve_device("cuda")
        return
    debug = options.view_as(DebugOptions)
    if not debug.lookup_experiment(ONE_PROCESS_PER_GPU):
        # one model per GPU instead of one per SDK process (Dataflow's GPU guide)
        debug.add_experiment(ONE_PROCESS_PER_GPU)
        log = logging.getLogger(__name__)
        log.info("--device cuda on Dataflow: added --experiments=%s", ONE_PROCESS_PER_GPU)


def run_job(
    job: BeamJob, argv: Sequence[str] | None, test_pipeline: Any = None, wait: bool = True
) -> Any:
    """Parse, plan, build and run ``job``; then print and write its summary.

    Args:
        job: the job's parts.
        argv: command-line flags (the job's options plus any Beam pipeline options).
        test_pipeline: a pipeline to use instead of creating one (tests).
        wait: wait for the job and write the summary; False submits and returns (Flex Template launch).

    Returns:
        The Beam ``PipelineResult``.

    Raises:
        AtrError: bad options or inputs, found while planning, before any work.
    """
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions, TestOptions

    log = logging.getLogger(f"pipelines.{job.name}")  # the job's package logger
    argv = list(sys.argv[1:] if argv is None else argv)
    job.build_parser().parse_known_args(argv)  # --help, and argparse-level errors, before any work
    options = PipelineOptions(argv)
    check_runner(options)
    plan = job.plan(options.view_as(job.options))
    pipeline = test_pipeline or beam.Pipeline(options=options)
    job.build(pipeline, plan)
    result = pipeline.run()
    if options.view_as(TestOptions).dry_run:  # translated (result.job), nothing submitted or run
        log.info("dry run: the job was translated, not submitted")
        return result
    if not wait:
        return result
    state = result.wait_until_finish()
    summary = job.summarize(plan, collect_counters(result, job.namespace), str(state))
    path = job.write_summary(plan, summary)
    print(job.format_summary(summary))
    log.info("summary written to %s", path)
    if not summary["balanced"]:
        log.error("%s (see %s)", job.unbalanced, path)
    return result


def with_default_runner(argv: Sequence[str] | None) -> list[str]:
    """``argv`` with ``--runner=FnApiRunner`` appended unless a runner was named."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--runner" or a.startswith("--runner=") for a in args):
        args.append(f"--runner={DEFAULT_LOCAL_RUNNER}")
    return args


def run_cli(main: Callable[[], object], prog: str) -> int:
    """Run ``main``; turn an :class:`AtrError` into one line on stderr and exit code 2."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        main()
    except AtrError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return 0


def exit_process(code: int) -> NoReturn:
    """End the process with ``code`` after Python's exit handlers, skipping C++ static destructors.

    pyarrow's thread pools can abort the interpreter during its final teardown (SIGABRT,
    "terminate called without an active exception", apache/arrow#34314), which turns a job's exit
    code into -6 at random. Exit handlers (logging, Beam, tqdm) still run, and output is flushed.
    """
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


TRUE_WORDS = ("true", "1", "yes")
FALSE_WORDS = ("false", "0", "no")


def parse_bool(text: str) -> bool:
    """``true``/``false`` (also 1/0, yes/no; any case) as a bool; what Flex Templates pass."""
    word = str(text).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_negated_bool(text: str) -> bool:
    """``not parse_bool(text)``: the value of a ``--no_x=true|false`` switch's destination."""
    return not parse_bool(text)


class OptionGroup:
    """An argparse group that skips flags another PipelineOptions class already registered.

    Beam's ``get_all_options`` parses the flags of every imported PipelineOptions subclass with one
    parser, so two jobs imported into one process (e.g. extract and embed, both with --output) would
    clash. A view (``options.view_as(ExtractOptions)``) still parses only this class's own flags.
    """

    def __init__(self, group: argparse._ArgumentGroup):
        self._group = group

    def add_flag(self, flag: str, help: str, dest: str | None = None, invert: bool = False) -> None:
        """A boolean switch: ``--flag`` alone, or ``--flag=true|false`` as a Flex Template passes it.

        ``invert=True`` makes a ``--no_x`` switch that stores False in ``dest`` when given (the
        option is True by default).
        """
        on = not invert
        self.add_argument(
            flag, dest=dest, nargs="?", const=on, default=not on, metavar="true|false",
            type=parse_bool if on else parse_negated_bool, help=help,
        )

    def add_argument(self, *flags: str, **kwargs: Any) -> argparse.Action | None:
        if any(f in self._group._option_string_actions for f in flags):
            return None
        return self._group.add_argument(*flags, **kwargs)


def options_parser(prog: str, description: str, options_cls: type, epilog: str) -> argparse.ArgumentParser:
    """An argparse parser holding one PipelineOptions class's flags, behind ``--help``."""
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog)
    options_cls._add_argparse_args(parser)
    return parser


def collect_counters(result: Any, namespace: str) -> dict[str, int]:
    """A finished pipeline's counters in ``namespace`` (committed values where the runner has them)."""
    from apache_beam.metrics.metric import MetricsFilter

    out: dict[str, int] = {}
    for c in result.metrics().query(MetricsFilter().with_namespace(namespace))["counters"]:
        value = c.committed if c.committed is not None else c.attempted
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + int(value or 0)
    return out


def write_json(path: str, obj: Any) -> str:
    """Write ``obj`` as indented JSON through Beam FileSystems (local or gs://); return ``path``."""
    import json

    from apache_beam.io.filesystems import FileSystems

    with FileSystems.create(path, mime_type="application/json") as f:
        f.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())
    return path

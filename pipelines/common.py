"""Helpers shared by the job entry points: the local runner default and error reporting."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from atr_core.errors import AtrError

# Beam's in-process portable runner. The plain DirectRunner of Beam 2.77 first tries to
# download a Prism binary from GitHub; this default never downloads anything.
DEFAULT_LOCAL_RUNNER = "FnApiRunner"


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


class OptionGroup:
    """An argparse group that skips flags another PipelineOptions class already registered.

    Beam's ``get_all_options`` parses the flags of every imported PipelineOptions subclass with one
    parser, so two jobs imported into one process (e.g. extract and embed, both with --output) would
    clash. A view (``options.view_as(ExtractOptions)``) still parses only this class's own flags.
    """

    def __init__(self, group: argparse._ArgumentGroup):
        self._group = group

    def add_argument(self, *flags: str, **kwargs: Any) -> argparse.Action | None:
        if any(f in self._group._option_string_actions for f in flags):
            return None
        return self._group.add_argument(*flags, **kwargs)

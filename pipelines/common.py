"""Helpers shared by the job entry points: the local runner default and error reporting."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence

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

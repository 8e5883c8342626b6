"""The ``atr`` console command: ``atr extract|train|embed|search|corpus|demo ...``.

Each subcommand is the same job as ``python -m pipelines.<name>`` with the same flags; the job's
module is imported only when its subcommand runs, so ``atr --help`` answers at once.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from pipelines.common import exit_process, run_cli

#: subcommand -> (module, one-line description)
COMMANDS = {
    "corpus": ("pipelines.corpus", "build the real-sound corpus (packaged recordings, Clotho layout)"),
    "extract": ("pipelines.extract", "audio -> CNN14 / log-mel segment shards (Beam)"),
    "train": ("pipelines.train", "segment shards + captions -> a trained retrieval model"),
    "embed": ("pipelines.embed", "retrieval vectors, metrics and reports at corpus scale (Beam)"),
    "search": ("pipelines.search", "text -> clips or clip -> captions over embedded vectors"),
    "demo": ("pipelines.demo", "corpus -> extract -> train -> embed -> search on this machine"),
}


def usage() -> str:
    """The top-level help text."""
    width = max(map(len, COMMANDS))
    lines = ["usage: atr COMMAND [flags]   (atr COMMAND --help for a command's flags)", "", "commands:"]
    lines += [f"  {name:<{width}}  {about}" for name, (_, about) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``argv`` (default ``sys.argv[1:]``) to a job; return its exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"atr: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    if name == "train":  # train's main already turns errors into exit codes
        return int(module.main(rest))
    return run_cli(lambda: module.main(rest), name)


def console() -> None:
    """The setup.py console-script entry point."""
    exit_process(main())


if __name__ == "__main__":
    console()

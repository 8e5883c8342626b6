"""``python -m pipelines.embed``: the embed job on the command line (exit code 2 on bad input)."""

import logging

from pipelines.common import exit_process, run_cli
from pipelines.embed.pipeline import main

LOG = logging.getLogger(__name__)

if __name__ == "__main__":
    # main comes from the importable package module, not this __main__ copy: DoFns and element
    # classes must pickle by their real module names for other processes and Dataflow workers.
    exit_process(run_cli(main, "embed"))

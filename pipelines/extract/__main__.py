"""``python -m pipelines.extract``: run the job, an AtrError becoming one line on stderr and exit code 2.

``main`` is imported from the package, not defined here: DoFns and element classes pickle by their
real module names (pipelines.extract.*) for other processes and Dataflow workers.
"""

from pipelines.common import exit_process, run_cli
from pipelines.extract import main

if __name__ == "__main__":
    exit_process(run_cli(main, "extract"))

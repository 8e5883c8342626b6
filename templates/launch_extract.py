"""Flex Template entry point for the extraction pipeline (FLEX_TEMPLATE_PYTHON_PY_FILE)."""

import logging

from pipelines import extract

if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    # The launcher passes the template parameters as --name=value; it must return once the
    # job is submitted, so the pipeline is not waited on here.
    extract.run(wait=False)

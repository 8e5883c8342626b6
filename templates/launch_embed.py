"""Flex Template entry point for the embedding/evaluation pipeline (FLEX_TEMPLATE_PYTHON_PY_FILE)."""

import logging

from pipelines import embed

if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    embed.run(wait=False)

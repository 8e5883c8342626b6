"""Option checks every job runs first, before any work (one helper, one message per kind of mistake)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from atr_core.errors import InputError


def check_at_least_one(options: Any, names: Iterable[str]) -> None:
    """Every named integer option of ``options`` is >= 1 (options left at None are skipped).

    Args:
        options: an argparse namespace, PipelineOptions view or dataclass holding the options.
        names: attribute names; the message names them as command-line flags (``--name``).

    Raises:
        InputError: the first option below 1, e.g. ``--batch_size must be >= 1, got 0``.
    """
    for name in names:
        value = getattr(options, name)
        if value is not None and value < 1:
            raise InputError(f"--{name} must be >= 1, got {value}")

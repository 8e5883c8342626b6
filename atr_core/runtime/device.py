"""Torch device resolution: the one place that turns ``auto`` / ``cpu`` / ``cuda[:N]`` into a device."""

from __future__ import annotations

from typing import TYPE_CHECKING

from atr_core.errors import InputError

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """The torch device for ``name``.

    Args:
        name: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    Returns:
        The ``torch.device``.

    Raises:
        InputError: an unknown name, or CUDA asked for where none is visible (so a worker whose
            driver failed never runs on the CPU silently).
    """
    import torch

    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise InputError(
                f"device {name!s}: CUDA is not available here (torch {torch.__version__}); "
                "use device cpu or auto"
            )
        dev = torch.device(text)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"device {name!s}: only {torch.cuda.device_count()} CUDA device(s) visible")
        return dev
    raise InputError(f"device {name!r}: expected auto, cpu or cuda[:N]")

"""Shared session fixtures: random-weight CNN14 in the official checkpoint layout.

Heavy imports happen inside the fixtures, so test modules that do not use them pay nothing.
The models are shared by the whole session: never modify them in a test (copy with
``pickle.loads(pickle.dumps(model))`` first).
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def cnn14_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seed-0 random CNN14 checkpoint, ``{"model": state_dict, "iteration": 0}`` (~327 MB, tmp)."""
    from atr_core.audio.cnn14 import save_random_checkpoint

    return save_random_checkpoint(tmp_path_factory.mktemp("cnn14") / "Cnn14_random_seed0.pth", seed=0)


@pytest.fixture(scope="session")
def cnn14_model(cnn14_checkpoint: Path):
    """:class:`atr_core.audio.cnn14.Cnn14Segments` loaded from ``cnn14_checkpoint`` (eval, CPU)."""
    from atr_core.audio.cnn14 import load_cnn14, resolve_checkpoint

    return load_cnn14(resolve_checkpoint(str(cnn14_checkpoint)))


@pytest.fixture(scope="session")
def lms_model():
    """:class:`atr_core.audio.lms.LogMelSegments` (no weights), shared by the session."""
    from atr_core.audio.lms import LogMelSegments

    return LogMelSegments()


@pytest.fixture(scope="session")
def cnn14_reference(cnn14_checkpoint: Path):
    """The reference: panns-inference's own ``Cnn14`` with the same weights (strict load).

    Returns ``segments(waveform: np.ndarray) -> np.ndarray (T, 2048)``: conv_block6's
    output captured by a forward hook during panns' own forward, averaged over mel bins.
    """
    import numpy as np
    import torch

    from atr_core.audio.cnn14 import CNN14_CONFIG, import_panns_models

    model = import_panns_models().Cnn14(**CNN14_CONFIG)
    ckpt = torch.load(cnn14_checkpoint, map_location="cpu", weights_only=True)
    model.load_state_dict(ckpt["model"], strict=True)
    model.eval()
    captured: list[torch.Tensor] = []
    model.conv_block6.register_forward_hook(lambda _m, _i, out: captured.append(out))

    def segments(waveform: np.ndarray) -> np.ndarray:
        captured.clear()
        with torch.inference_mode():
            model(torch.from_numpy(np.asarray(waveform, dtype=np.float32))[None, :])
        return torch.mean(captured[0], dim=3)[0].T.numpy().copy()

    segments.model = model
    return segments


@pytest.fixture(scope="session")
def real_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 200-clip real-sound corpus (Clotho layout, splits 100 / 40 / 60), seed 0.

    Built from the packaged recordings (:mod:`atr_core.corpus`): the Debian packages are read
    where installed, else from the atr cache, where ``python -m pipelines.corpus fetch`` (run by
    .ci/run) or a first build puts them.
    """
    from atr_core.corpus import build_corpus

    out = tmp_path_factory.mktemp("real_corpus")
    build_corpus(out, 200, seed=0, fractions=(0.5, 0.2, 0.3), progress=False)
    return out

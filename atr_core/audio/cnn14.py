"""PANNs CNN14 segment embeddings: the frozen feature extractor of reference.md section 2.

:class:`Cnn14Segments` is panns-inference's own ``Cnn14`` (same modules, so the same
state_dict keys as the official ``Cnn14_mAP=0.431.pth``) with a forward that stops at
the tensor before global pooling: conv_block6's output averaged over the mel axis,
one 2048-d vector per 32 STFT frames (0.32 s), shape (B, T, 2048).

``import panns_inference`` runs the package ``__init__``, whose ``config.py`` shells out
to ``wget`` and writes into ``~/panns_data``; its ``models.py`` imports matplotlib.pyplot,
which writes a font cache into ``$HOME``. This module imports ``panns_inference.models``
without either (see :func:`import_panns_models`), so importing it touches no network
and writes nothing.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import importlib.util
import os
import pickle
import sys
import tempfile
import threading
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from atr_core.audio.matmul_conv import PatchMatmulConv2d
from atr_core.errors import CheckpointError
from atr_core.runtime.device import resolve_device
from atr_core.runtime.storage import FetchError, fetch, sha256_file

SAMPLE_RATE = 32000
HOP = 320
SEGMENT_FRAMES = 32
SEGMENT_SAMPLES = HOP * SEGMENT_FRAMES  # 10240
EMBED_DIM = 2048
WINDOW_SIZE = 1024
MEL_BINS = 64
FMIN = 50
FMAX = 14000
CLASSES_NUM = 527
#: The keyword arguments of panns' ``Cnn14`` for the official 32 kHz checkpoint.
CNN14_CONFIG = dict(
    sample_rate=SAMPLE_RATE,
    window_size=WINDOW_SIZE,
    hop_size=HOP,
    mel_bins=MEL_BINS,
    fmin=FMIN,
    fmax=FMAX,
    classes_num=CLASSES_NUM,
)

OFFICIAL_URL = "https://zenodo.org/record/3987831/files/Cnn14_mAP%3D0.431.pth?download=1"
OFFICIAL_NAME = "Cnn14_mAP=0.431.pth"
RANDOM_PREFIX = "random:"
#: The convs that :meth:`Cnn14Segments.use_matmul_convs_` computes as matrix products.
MATMUL_CONVS = (
    "conv_block1.conv1",
    "conv_block6.conv1",
    "conv_block6.conv2",
)
#: State-dict keys of the fixed front end (STFT kernels, mel matrix): never randomised.
FRONT_END_PREFIXES = ("spectrogram_extractor.", "logmel_extractor.")


def num_segments(n_samples: int) -> int:
    """Segments CNN14 gives for ``n_samples`` at 32 kHz: floor((n // 320 + 1) / 32)."""
    return (n_samples // HOP + 1) // SEGMENT_FRAMES


# --------------------------------------------------------------------------- guarded import

_IMPORT_LOCK = threading.Lock()
_BARE_DOC = (
    "Bare panns_inference package registered by atr_core.audio.cnn14 so that importing "
    "panns_inference.models does not run the package __init__ (which downloads a label CSV)."
)


def _bare_getattr(name: str):
    raise AttributeError(
        f"panns_inference.{name} is not available: atr_core.audio.cnn14 imported panns_inference.models "
        "without running the package __init__ (it downloads files); import the submodule you need "
        "explicitly, e.g. panns_inference.inference"
    )


def import_panns_models() -> types.ModuleType:
    """Import ``panns_inference.models`` without network access or writes to ``$HOME``.

    If ``panns_inference`` is not imported yet, a bare package module with the real
    ``__path__`` is registered first so its ``__init__`` (and ``config.py``'s wget) never
    runs. If the real package is already imported, its ``models`` module is used as is.
    ``matplotlib``/``matplotlib.pyplot`` (imported but unused by ``models.py``) are
    stubbed during the import when not already loaded, so no matplotlib cache is built.
    """
    with _IMPORT_LOCK:
        loaded = sys.modules.get("panns_inference.models")
        if loaded is not None:
            return loaded
        if "panns_inference" not in sys.modules:
            spec = importlib.util.find_spec("panns_inference")
            if spec is None or not spec.submodule_search_locations:
                raise ImportError("panns-inference is not installed (pip install panns-inference==0.1.1)")
            pkg = types.ModuleType("panns_inference", _BARE_DOC)
            pkg.__path__ = list(spec.submodule_search_locations)
            pkg.__spec__ = importlib.machinery.ModuleSpec("panns_inference", None, is_package=True)
            pkg.__spec__.submodule_search_locations = pkg.__path__
            pkg.__getattr__ = _bare_getattr
            sys.modules["panns_inference"] = pkg
        stubs = {}
        for name in ("matplotlib", "matplotlib.pyplot"):
            if name not in sys.modules:
                stubs[name] = sys.modules[name] = types.ModuleType(name, "stub: unused by panns models")
        try:
            return importlib.import_module("panns_inference.models")
        finally:
            for name, mod in stubs.items():
                if sys.modules.get(name) is mod:
                    del sys.modules[name]


_PANNS = import_panns_models()
_Cnn14, _ConvBlock = _PANNS.Cnn14, _PANNS.ConvBlock


# --------------------------------------------------------------------------- the model

#: ``torch.nn.init`` functions that :func:`skipped_weight_init` turns into no-ops.
_INIT_FUNCTIONS = (
    "uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "xavier_uniform_",
    "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_",
)  # fmt: skip
_INIT_LOCK = threading.Lock()


@contextlib.contextmanager
def skipped_weight_init() -> Iterator[None]:
    """Within the block, ``torch.nn.init`` initialisers leave tensors as allocated (uninitialised).

    For building a module whose every parameter and buffer is then loaded (``strict=True``) or
    re-initialised: it saves CNN14's ~1 s of random draws per build. The patch is process-wide
    while the block runs (as in transformers' ``no_init_weights``); a lock keeps two such blocks
    from interleaving. Deterministic assignments (torchlibrosa's STFT and mel matrices) still run.
    """
    with _INIT_LOCK:
        saved = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS}

        def _skip(tensor, *args, **kwargs):
            return tensor

        try:
            for name in saved:
                setattr(nn.init, name, _skip)
            yield
        finally:
            for name, fn in saved.items():
                setattr(nn.init, name, fn)


class Cnn14Segments(_Cnn14):
    """panns' Cnn14 returning segment embeddings (B, T, 2048), T = num_segments(L).

    Always in inference mode: ``train()`` keeps it in eval (no dropout, SpecAugment or
    batch statistics), so a clip's output never depends on its batch. ``channels_last``
    runs the conv body in channels-last memory format (same values, faster on CPU).
    Pickles as its state_dict (the pickle names only this module, whose import is safe).
    """

    output_dim = EMBED_DIM

    def __init__(self, channels_last: bool = False, init_weights: bool = True) -> None:
        with torch.random.fork_rng(devices=[]):  # panns' init draws from the global RNG
            if init_weights:
                super().__init__(**CNN14_CONFIG)
            else:  # every weight is about to be overwritten: skip ~80M random draws
                with skipped_weight_init():
                    super().__init__(**CNN14_CONFIG)
        self.channels_last = channels_last
        self.batchnorm_folded = False
        self.matmul_convs = False
        self.eval()

    def fold_batchnorm_(self) -> Cnn14Segments:
        """Fold every conv block's eval-mode BatchNorm into the conv before it, in place.

        Uses ``torch.nn.utils.fusion.fuse_conv_bn_weights``: each conv gains a bias, each BatchNorm
        becomes ``nn.Identity``, and panns' ``ConvBlock.forward`` runs unchanged. The same
        function up to rounding (about 4e-6 of the output scale), one memory pass fewer per conv.
        The state_dict keys change accordingly (pickling keeps them). ``bn0``, which acts on mel
        bins before a zero-padded conv, cannot be folded exactly and stays.
        """
        if self.batchnorm_folded:
            return self
        for block in self.modules():
            if isinstance(block, _ConvBlock):
                _fold_into(block.conv1, block.bn1)
                _fold_into(block.conv2, block.bn2)
                block.bn1, block.bn2 = nn.Identity(), nn.Identity()
        self.batchnorm_folded = True
        return self

    def use_matmul_convs_(self) -> Cnn14Segments:
        """Compute the convs that oneDNN runs slowly on CPU as one matrix product each, in place.

        Swaps :data:`MATMUL_CONVS` (the 1-channel first conv and conv_block6's convs over
        31 x 2 maps) for :class:`~atr_core.audio.matmul_conv.PatchMatmulConv2d`: same parameters and
        state_dict, same function up to rounding, 1.5-3.5x faster per layer on CPU. The STFT
        stays on torch's conv: its rounding is amplified by the log of near-empty bins (a
        pure tone moved 1.3e-4 of the output scale as a matmul). Leave it off on GPUs.
        """
        if self.matmul_convs:
            return self
        for name in MATMUL_CONVS:
            parent_name, _, attr = name.rpartition(".")
            parent = self.get_submodule(parent_name)
            setattr(parent, attr, PatchMatmulConv2d.from_conv(getattr(parent, attr)))
        self.matmul_convs = True
        return self

    def train(self, mode: bool = True) -> Cnn14Segments:
        """Frozen extractor: stays in eval mode whatever ``mode`` says."""
        return super().train(False)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:  # noqa: D102
        x = self.spectrogram_extractor(waveform)  # (B, 1, frames, 513)
        x = self.logmel_extractor(x)  # (B, 1, frames, 64)
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.conv_block1(x, pool_size=(2, 2), pool_type="avg")
        x = self.conv_block2(x, pool_size=(2, 2), pool_type="avg")
        x = self.conv_block3(x, pool_size=(2, 2), pool_type="avg")
        x = self.conv_block4(x, pool_size=(2, 2), pool_type="avg")
        x = self.conv_block5(x, pool_size=(2, 2), pool_type="avg")
        x = self.conv_block6(x, pool_size=(1, 1), pool_type="avg")  # (B, 2048, T, 2)
        return torch.mean(x, dim=3).transpose(1, 2)  # (B, T, 2048)

    def __reduce__(self):
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        flags = (self.channels_last, self.batchnorm_folded, self.matmul_convs)
        return _rebuild_cnn14_segments, (state, *flags)


def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Replace ``conv``'s parameters by those of conv-then-``bn`` (eval mode), without copying the module."""
    with torch.no_grad():
        weight, bias = fuse_conv_bn_weights(
            conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
        )
    conv.weight, conv.bias = weight, bias


def _rebuild_cnn14_segments(
    state: dict[str, torch.Tensor],
    channels_last: bool,
    batchnorm_folded: bool = False,
    matmul_convs: bool = False,
) -> Cnn14Segments:
    model = Cnn14Segments(channels_last=channels_last, init_weights=False)
    if batchnorm_folded:
        model.fold_batchnorm_()
    if matmul_convs:
        model.use_matmul_convs_()
    model.load_state_dict(state, strict=True)
    model.requires_grad_(False)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


@lru_cache(maxsize=1)
def official_state_shapes() -> dict[str, tuple[int, ...]]:
    """Key -> shape of the official checkpoint's ``model`` state_dict (from a built model)."""
    return {k: tuple(v.shape) for k, v in Cnn14Segments(init_weights=False).state_dict().items()}


def init_random_(model: Cnn14Segments, seed: int) -> Cnn14Segments:
    """Seeded random weights in place (front end kept): Xavier convs/linears, calibrated BatchNorms.

    Random BatchNorm statistics would make every clip's features nearly identical (activations
    drift layer by layer until the biases dominate), so the running statistics are instead
    estimated on a fixed, seeded calibration signal (noises, tones, modulations): the features of
    an untrained CNN14 then still follow the audio content. Deterministic for a given ``seed``.
    """
    gen = torch.Generator().manual_seed(seed)

    def uniform(t: torch.Tensor, lo: float, hi: float) -> None:
        t.copy_(torch.rand(t.shape, generator=gen) * (hi - lo) + lo)

    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(mod.weight, generator=gen)
                if mod.bias is not None:
                    uniform(mod.bias, -0.01, 0.01)
            elif isinstance(mod, nn.BatchNorm2d):
                uniform(mod.weight, 0.5, 1.5)
                uniform(mod.bias, -0.1, 0.1)
        _calibrate_batchnorms(model, _calibration_audio(gen))
    return model


def _calibration_audio(gen: torch.Generator, clips: int = 6, seconds: float = 3.0) -> torch.Tensor:
    """A seeded batch of varied signals: white/brown noise, tones, amplitude modulation, silence."""
    n = int(seconds * SAMPLE_RATE)
    t = torch.arange(n, dtype=torch.float64) / SAMPLE_RATE
    out = []
    for i in range(clips):
        noise = torch.randn(n, generator=gen, dtype=torch.float64)
        if i % 2:
            noise = torch.cumsum(noise, 0)
            noise = noise - noise.mean()
        f0 = 100.0 * 2 ** (7 * float(torch.rand(1, generator=gen)))
        tone = torch.sin(2 * torch.pi * f0 * t) * (0.5 + 0.5 * torch.sin(2 * torch.pi * (i + 1) * 0.7 * t))
        x = 0.3 * tone + 0.1 * noise / noise.abs().max()
        x[: n // (i + 2)] *= 0.01  # a quiet stretch at the start
        out.append(x)
    return torch.stack(out).float()


def _calibrate_batchnorms(model: Cnn14Segments, audio: torch.Tensor) -> None:
    """Set every BatchNorm's running statistics to those of one forward pass over ``audio``."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one batch gives exactly its statistics
        m.train(True)
    try:
        model(audio)
    finally:
        for m in norms:
            m.momentum = 0.1
            m.train(False)


def save_random_checkpoint(path: str | os.PathLike, seed: int) -> Path:
    """Write seeded random weights in the official layout ``{"model": state_dict, "iteration": 0}``."""
    path = Path(path)
    model = init_random_(Cnn14Segments(), seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    # torch names the zip archive after the file stem: the temporary name must have one
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{path.stem}-", suffix=".part")
    os.close(fd)
    try:
        torch.save({"model": model.state_dict(), "iteration": 0}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


# --------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True)
class CheckpointInfo:
    """Which CNN14 weights to use: ``spec`` as given, where it lies locally, its file sha256.

    Random weights have ``spec="random:SEED"``, no local path and ``sha256=""``.
    """

    spec: str
    local_path: str | None
    sha256: str

    @property
    def random_seed(self) -> int | None:
        """The seed of ``random:SEED`` weights, else None."""
        return _parse_random(self.spec) if self.spec.startswith(RANDOM_PREFIX) else None


def _ckpt_error(spec: str | None, problem: str) -> CheckpointError:
    return CheckpointError(
        f"--cnn14_checkpoint {spec!r}: {problem}. CNN14 features need the official PANNs weights "
        f"{OFFICIAL_NAME} ({OFFICIAL_URL}): pass their local path, gs:// or https:// URL as "
        f"--cnn14_checkpoint (or random:SEED for untrained weights, tests only)"
    )


def _parse_random(spec: str) -> int:
    text = spec[len(RANDOM_PREFIX) :]
    if not text.isdigit():
        raise _ckpt_error(spec, "random weights need a non-negative integer seed, e.g. random:0")
    return int(text)


def resolve_checkpoint(
    spec: str | None, sha256: str | None = None, cache_dir: str | os.PathLike | None = None
) -> CheckpointInfo:
    """Locate, fetch (gs://, https://: cached, sha256-checked when given) and validate CNN14 weights.

    The file must be a ``torch.save``'d dict whose ``"model"`` state_dict has exactly the
    official keys and shapes; it is read with ``torch.load(weights_only=True)``.
    ``random:SEED`` names seeded random weights (never a default). Raises :class:`CheckpointError`.
    """
    if spec is None or not str(spec).strip():
        raise _ckpt_error(spec, "no checkpoint given")
    spec = str(spec).strip()
    if spec.startswith(RANDOM_PREFIX):
        _parse_random(spec)
        if sha256:
            raise _ckpt_error(spec, "a sha256 cannot be checked for random weights")
        return CheckpointInfo(spec=spec, local_path=None, sha256="")
    try:
        path = fetch(spec, sha256=sha256, cache_dir=cache_dir)
    except FetchError as exc:
        raise _ckpt_error(spec, str(exc)) from exc
    load_official_state_dict(path, spec, mmap=True)
    digest = sha256.lower() if sha256 else sha256_file(path)
    return CheckpointInfo(spec=spec, local_path=str(path), sha256=digest)


# numpy objects that training-time saves may hold (e.g. a sampler state), safe to rebuild.
_NUMPY_SAFE_GLOBALS = [
    np.ndarray,
    np.dtype,
    np._core.multiarray._reconstruct,
    np._core.multiarray.scalar,
    (np._core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
    (np._core.multiarray.scalar, "numpy.core.multiarray.scalar"),
    *(getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")),
]


def _torch_load(path: str | os.PathLike, spec: str, mmap: bool = False) -> object:
    """``torch.load(weights_only=True)``; ``mmap`` maps tensors instead of reading them (zip format only)."""
    if mmap and not _is_zip_checkpoint(path):
        mmap = False  # the legacy (pre-1.6) format cannot be memory-mapped
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except pickle.UnpicklingError:
            with torch.serialization.safe_globals(_NUMPY_SAFE_GLOBALS):
                return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # torch raises many types for a non-checkpoint file
        detail = " ".join(str(exc).split())[:300]
        raise _ckpt_error(
            spec, f"{path} is not a readable weights-only PyTorch file ({type(exc).__name__}: {detail})"
        ) from exc


def _is_zip_checkpoint(path: str | os.PathLike) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def load_official_state_dict(
    path: str | os.PathLike, spec: str | None = None, mmap: bool = False
) -> dict[str, torch.Tensor]:
    """Read ``path`` and return its ``"model"`` state_dict after checking keys and shapes.

    ``mmap=True`` memory-maps the tensors (when the file is in the zip format): checking a
    checkpoint then reads its metadata, not its 300 MB of weights.
    """
    spec = spec or str(path)
    obj = _torch_load(path, spec, mmap=mmap)
    if not isinstance(obj, Mapping):
        raise _ckpt_error(spec, f"holds a {type(obj).__name__}, expected a dict with a 'model' state_dict")
    if "model" not in obj:
        raise _ckpt_error(spec, f"has keys {sorted(map(str, obj))[:8]} but no 'model' state_dict")
    state = obj["model"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise _ckpt_error(spec, "its 'model' entry is not a state_dict of tensors")
    expected = official_state_shapes()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        f"{k} {tuple(state[k].shape)} != {expected[k]}"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != expected[k]
    )
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[:4]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:4]})")
        if wrong:
            parts.append(f"{len(wrong)} shape mismatches (e.g. {wrong[:4]})")
        raise _ckpt_error(spec, "not a CNN14 (32 kHz, 527 classes) state_dict: " + "; ".join(parts))
    return dict(state)


def load_cnn14(info: CheckpointInfo, device: str | torch.device = "cpu") -> Cnn14Segments:
    """Build :class:`Cnn14Segments` with ``info``'s weights on ``device`` (eval, requires_grad False).

    Args:
        info: a checkpoint resolved by :func:`resolve_checkpoint` (official file or ``random:SEED``).
        device: ``auto``, ``cpu`` or ``cuda[:N]``.

    Returns:
        The frozen segment model.

    Raises:
        CheckpointError: the file cannot be fetched again, fails its sha256, or does not hold
            the official CNN14 state_dict. If ``info.local_path`` does not exist here (e.g. a
            Beam worker), the file is fetched again from ``info.spec`` first.
        InputError: a device that is not available.
    """
    dev = resolve_device(device)
    model = Cnn14Segments(init_weights=False)  # every weight is set below
    seed = info.random_seed
    if seed is not None:
        init_random_(model, seed)
    else:
        path = info.local_path
        if not path or not os.path.isfile(path):
            try:
                path = fetch(info.spec, sha256=info.sha256 or None)
            except FetchError as exc:
                raise _ckpt_error(info.spec, str(exc)) from exc
        model.load_state_dict(load_official_state_dict(path, info.spec), strict=True)
    model.requires_grad_(False)
    return model.to(dev)

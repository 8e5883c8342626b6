"""The training loop: epochs, validation, model selection, checkpoints, resume and curves.

The recipe is the authors' (reference sections 5-7): batches of clips with all their captions,
similarities averaged over each clip's own captions for the loss, bidirectional max-margin ranking
loss, Ranger (or Adam), StepLR stepped once per epoch after validation, validation with the full
metrics every epoch, best epoch by validation t2a geometric mean of R@1/5/10 (ties: later epoch).

Everything a run writes lives in one output directory (:class:`RunDir`, local or gs://):

=================  ===========================================================================
``run.json``       what the run is (options, model config, data): checked on ``resume``
``checkpoint.pt``  after every epoch: model, optimizer, scheduler, RNG states, history, best
``model.pt`` ...   the best epoch's model, written by :func:`atr_core.model.directory.save_model`
``metrics.jsonl``  one JSON line per epoch (loss, lr, validation metrics, time)
``curves.png``     training/validation loss and validation R@1/5/10 per epoch
``data.json``      the caption/shard join report
=================  ===========================================================================

Determinism: the batch order of an epoch is a function of ``(seed, epoch)`` and the checkpoint
holds the torch/numpy/python RNG states, so on the CPU an interrupted run that resumes ends with
bit-identical weights.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import fsspec
import numpy as np
import torch
from tqdm import tqdm

from atr_core.errors import AtrError, CheckpointError, ConfigMismatchError, OutputExistsError
from atr_core.training.data import Batch, ClipSource
from atr_core.training.losses import clip_averaged_similarity

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
DATA_FILE = "data.json"
RUN_KIND = "atr-train-run"
CHECKPOINT_VERSION = 1
BN_STATS = ("precise", "running")

# The schedule for corpora smaller than the paper's (docs/train.md, "Schedule"): at least
# MIN_STEPS optimizer steps and at least BATCHES_PER_EPOCH batches an epoch. Clotho (3,839
# training clips) and AudioCaps (49,838) resolve to the paper's 128 clips x 20 epochs, gamma 0.95.
PAPER_BATCH, PAPER_EPOCHS, PAPER_GAMMA = 128, 20, 0.95
MIN_STEPS = 600
BATCHES_PER_EPOCH = 6
MIN_BATCH = 16
# Collapse diagnostics: a side whose eval-mode embeddings have a mean pairwise cosine above this
# has collapsed (every item looks alike); a loss this close to the margin has not moved.
COLLAPSE_COSINE = 0.99
STUCK_LOSS_TOL = 1e-3
BATCH_BAR_MIN = 20  # epochs with fewer batches get no per-batch progress bar


@dataclass
class TrainConfig:
    """The optimisation recipe; the defaults are the authors' (reference section 7)."""

    epochs: int = 20
    batch_size: int = 128
    optimizer: str = "ranger"
    lr: float = 0.01
    weight_decay: float = 1e-3
    lr_gamma: float = 0.95
    margin: float = 0.2
    seed: int = 0
    eval_batch_size: int = 256
    progress: bool = True
    #: BatchNorm statistics used in eval mode: "precise" recomputes them over the training set
    #: after every epoch (project decision, docs/train.md); "running" keeps PyTorch's running
    #: averages (the authors' behaviour).
    bn_stats: str = "precise"
    bn_batches: int = 200
    #: Seconds between checkpoints (a checkpoint of the paper's model is ~1 GB: model + optimizer
    #: state); the last epoch always writes one. 0: after every epoch.
    checkpoint_interval_s: float = 300.0

    #: Fields that may change when a run is resumed (they do not change what an epoch computes).
    RESUMABLE = ("epochs", "eval_batch_size", "progress", "checkpoint_interval_s")

    def __post_init__(self) -> None:
        if self.bn_stats not in BN_STATS:
            raise ValueError(f"bn_stats must be one of {', '.join(BN_STATS)}, got {self.bn_stats!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    """What :func:`fit` returns: the per-epoch history and the selected epoch."""

    history: list[dict]
    best_epoch: int
    best_score: float
    output: str
    resumed_from: int = 0


# --------------------------------------------------------------------------- output directory


class RunDir:
    """The run's output directory. A URL (gs://...) is staged locally and uploaded after each epoch."""

    def __init__(self, uri: str):
        self.remote = "://" in uri
        self.uri = uri.rstrip("/") if self.remote else uri
        self._fs = fsspec.url_to_fs(uri)[0] if self.remote else None
        self.local = Path(tempfile.mkdtemp(prefix="atr-train-")) if self.remote else Path(uri)

    def path(self, name: str) -> Path:
        """Local path of file ``name`` (write here, then :meth:`push`)."""
        return self.local / name

    def existing(self) -> list[str]:
        """Names of the files the output directory already holds (sorted)."""
        if self.remote:
            if not self._fs.exists(self.uri):
                return []
            return sorted(p.rsplit("/", 1)[-1] for p in self._fs.ls(self.uri, detail=False))
        if self.local.exists() and not self.local.is_dir():
            raise OutputExistsError(f"{self.uri}: exists and is not a directory")
        return sorted(os.listdir(self.local)) if self.local.is_dir() else []

    def prepare(self, pull: bool) -> None:
        """Create the local directory; with ``pull``, copy a remote run's files down first."""
        self.local.mkdir(parents=True, exist_ok=True)
        if self.remote and pull:
            for name in self.existing():
                self._fs.get(f"{self.uri}/{name}", str(self.local / name), recursive=True)

    def remove(self, names: list[str]) -> None:
        """Delete files of a previous run (``--overwrite``)."""
        for name in names:
            if self.remote:
                self._fs.rm(f"{self.uri}/{name}", recursive=True)
            target = self.local / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()

    def push(self) -> None:
        """Upload the staged files, sub-directories included (no-op for a local directory)."""
        if self.remote:
            for p in sorted(self.local.rglob("*")):
                if p.is_file() and not p.name.startswith("."):
                    self._fs.put_file(str(p), f"{self.uri}/{p.relative_to(self.local).as_posix()}")

    def __str__(self) -> str:
        return self.uri


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary name beside ``path``, then rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def atomic_torch_save(obj: object, path: Path) -> None:
    """``torch.save`` to a temporary name, then rename into place (never a half-written file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def prepare_output(
    run: RunDir, run_info: Mapping, owned: tuple[str, ...], resume: bool, overwrite: bool
) -> bool:
    """Check the output directory against this run; return True when there is a run to resume.

    A directory holding any file in ``owned`` holds another run: refused unless ``resume`` (the
    run must be the same: :class:`ConfigMismatchError` otherwise) or ``overwrite`` (its files
    are deleted). Raises :class:`OutputExistsError` when refused.
    """
    present = [n for n in run.existing() if n in owned]
    if present and not (resume or overwrite):
        raise OutputExistsError(
            f"{run}: already holds a training run ({', '.join(present)}); "
            "pass --resume to continue it or --overwrite to replace it"
        )
    if present and overwrite and not resume:
        log.warning("%s: --overwrite: deleting the previous run's files %s", run, ", ".join(present))
        run.remove(present)
        present = []
    run.prepare(pull=bool(present))
    if not present:
        return False
    previous = read_run_info(run.path(RUN_FILE)) if RUN_FILE in present else None
    if previous is None:
        raise OutputExistsError(f"{run}: has {', '.join(present)} but no {RUN_FILE}; cannot resume it")
    diff = diff_run_info(previous, run_info)
    if diff:
        raise ConfigMismatchError(
            f"{run}: --resume with different settings than the run there: "
            + "; ".join(f"{k}: was {a!r}, now {b!r}" for k, a, b in diff)
        )
    return (run.path(CHECKPOINT_FILE)).exists()


def read_run_info(path: Path) -> dict:
    """The ``run.json`` of a previous run."""
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise OutputExistsError(f"{path}: unreadable run description: {exc}") from exc
    if info.get("kind") != RUN_KIND:
        raise OutputExistsError(f"{path}: not an atr training run (kind={info.get('kind')!r})")
    return info


def diff_run_info(old: Mapping, new: Mapping, prefix: str = "") -> list[tuple[str, object, object]]:
    """Differences between two run descriptions, ignoring keys that may change on resume."""
    out = []
    for key in sorted(set(old) | set(new)):
        name = f"{prefix}{key}"
        if key in TrainConfig.RESUMABLE:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out.extend(diff_run_info(a, b, prefix=f"{name}."))
        elif a != b:
            out.append((name, a, b))
    return out


# --------------------------------------------------------------------------- schedule


@dataclass(frozen=True)
class Schedule:
    """Batch size, epochs and per-epoch LR factor of a run, and where they came from."""

    batch_size: int
    epochs: int
    lr_gamma: float
    auto: tuple[str, ...] = ()  # the fields that were resolved automatically


def resolve_schedule(
    n_train: int, batch_size: int | None = None, epochs: int | None = None, lr_gamma: float | None = None
) -> Schedule:
    """The paper's schedule, stretched for small training sets; given values are kept as they are.

    ``batch_size`` (None = auto): 128, or for fewer than about 550 clips the power of two nearest to
    ``n_train / 6`` (at least 16), so an epoch has at least 6 batches. ``epochs`` (None = auto):
    20, or more so the run makes at least :data:`MIN_STEPS` (600, Clotho's count under the paper's
    recipe) optimizer steps. ``lr_gamma`` (None = auto): 0.95 ** (20 / epochs), so the learning
    rate falls by the paper's total factor (0.95 ** 20) over the run. Clotho and AudioCaps resolve
    to exactly the paper's 128 / 20 / 0.95.
    """
    if n_train < 2:
        raise ValueError(f"need at least 2 training clips, got {n_train}")
    auto = []
    if batch_size is None:
        auto.append("batch_size")
        guess = 2 ** round(math.log2(max(n_train / BATCHES_PER_EPOCH, 1)))
        batch_size = int(min(PAPER_BATCH, max(MIN_BATCH, guess)))
    auto_epochs = epochs is None
    if auto_epochs:
        auto.append("epochs")
        steps = math.ceil(n_train / batch_size)
        epochs = max(PAPER_EPOCHS, math.ceil(MIN_STEPS / steps))
    if lr_gamma is None:
        auto.append("lr_gamma")
        lr_gamma = PAPER_GAMMA ** (PAPER_EPOCHS / epochs) if auto_epochs else PAPER_GAMMA
    return Schedule(int(batch_size), int(epochs), float(lr_gamma), tuple(auto))


# --------------------------------------------------------------------------- RNG state


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy's global generator and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """The torch/numpy/python RNG states, as types ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping) -> None:
    """Restore what :func:`rng_state` captured."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- one epoch


def batch_loss(model, batch: Batch, loss_fn) -> torch.Tensor:
    """The training loss of one batch (caption-averaged similarities, reference section 5)."""
    audio = model.encode_audio(batch.audio, batch.audio_mask)
    text = model.encode_text(batch.text, batch.text_mask)
    sims = model.similarity(text, audio)
    return loss_fn(clip_averaged_similarity(sims, batch.caption_clip, len(batch)))


def train_epoch(
    model, source: ClipSource, optimizer, loss_fn, device: torch.device, epoch: int, cfg: TrainConfig
) -> dict:
    """One pass over ``source`` in the order of ``(cfg.seed, epoch)``; returns loss and counts."""
    model.train()
    total, clips, batches = 0.0, 0, 0
    n_batches = source.n_batches(cfg.batch_size)
    bar = tqdm(  # a bar per epoch only where an epoch is long; fit() shows the bar over epochs
        total=n_batches, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch",
        disable=not cfg.progress or n_batches < BATCH_BAR_MIN, leave=False, dynamic_ncols=True, position=1,
    )
    with bar:
        for batch in source.batches(cfg.batch_size, epoch=epoch, shuffle=True, seed=cfg.seed):
            batch = batch.to(device)
            loss = batch_loss(model, batch, loss_fn)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = float(loss.detach())
            if not np.isfinite(value):
                raise AtrError(
                    f"epoch {epoch}: the training loss became {value} at batch {batches + 1} "
                    f"(lr {optimizer.param_groups[0]['lr']:.3g}); try a lower --lr"
                )
            total += value * len(batch)
            clips += len(batch)
            batches += 1
            bar.set_postfix(loss=f"{value:.4f}", refresh=False)
            bar.update()
    if clips != len(source):
        raise RuntimeError(f"epoch {epoch}: trained on {clips} clips, the split has {len(source)}")
    return {"train_loss": total / max(clips, 1), "train_clips": clips, "train_batches": batches}


def batchnorm_layers(model: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer of ``model``."""
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recompute_batchnorm_stats(
    model, source: ClipSource, device: torch.device, batch_size: int, epoch: int, seed: int,
    max_batches: int = 200,
) -> int:
    """Set every BatchNorm's running statistics to their average over training batches ("precise BN").

    PyTorch's running averages (momentum 0.1) lag behind the weights, and after a few dozen steps
    still carry their initial value (running_var starts at 1 and decays as 0.9 ** steps): eval
    mode then normalises differently from training. This pass runs the model in train mode, without
    gradients, over up to ``max_batches`` batches of the epoch's own order (same batch size, so the
    statistics are those the layers saw while training), with ``momentum=None`` (an exact mean
    over the batches). Uses no random numbers. Returns the number of batches seen.
    """
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    seen = 0
    try:
        for batch in source.batches(batch_size, epoch=epoch, shuffle=True, seed=seed):
            if seen >= max_batches:
                break
            b = batch.to(device)
            model.encode_audio(b.audio, b.audio_mask)
            model.encode_text(b.text, b.text_mask)
            seen += 1
    finally:
        for m, mom in zip(layers, momenta, strict=True):
            m.momentum = mom
        model.eval()
    return seen


def mean_pairwise_cosine(emb: torch.Tensor) -> float:
    """Mean cosine similarity over all pairs of distinct rows of ``emb`` (1.0: every row alike)."""
    n = len(emb)
    if n < 2:
        return float("nan")
    x = torch.nn.functional.normalize(emb.double(), dim=-1)
    total = x.sum(dim=0)
    return float((total @ total - n) / (n * (n - 1)))


@torch.no_grad()
def encode_split(
    model, source: ClipSource, device: torch.device, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """Embed every clip and caption of ``source`` in eval mode.

    Returns ``(text_emb (C, E), audio_emb (N, E), caption_to_clip (C,), audio_ids)`` on the CPU,
    captions in audio-major order (each caption is its own query: reference section 5).
    """
    model.eval()
    texts, audios, owners, ids = [], [], [], []
    for batch in source.batches(batch_size):
        b = batch.to(device)
        audios.append(model.encode_audio(b.audio, b.audio_mask).float().cpu())
        texts.append(model.encode_text(b.text, b.text_mask).float().cpu())
        owners.append(batch.caption_clip + len(ids))
        ids.extend(batch.audio_ids)
    return torch.cat(texts), torch.cat(audios), torch.cat(owners), ids


def evaluate(model, source: ClipSource, device: torch.device, loss_fn=None, batch_size: int = 256) -> dict:
    """Full retrieval metrics on ``source`` (plus the loss on each clip's first caption, if asked)."""
    from atr_core.evaluation.metrics import blocked_retrieval_metrics

    text, audio, owner, _ = encode_split(model, source, device, batch_size)
    # JSON round trip: plain Python numbers (numpy scalars do not load with weights_only=True).
    metrics = blocked_retrieval_metrics(text.numpy(), audio.numpy(), owner.numpy())
    out = {
        "metrics": json.loads(json.dumps(metrics)),
        "spread": {"audio": mean_pairwise_cosine(audio), "text": mean_pairwise_cosine(text)},
    }
    if loss_fn is not None:
        first = torch.ones(len(owner), dtype=torch.bool)
        first[1:] = owner[1:] != owner[:-1]
        out["loss"] = float(loss_fn(text[first] @ audio.T))
    return out


def selection_score(metrics: Mapping) -> float:
    """The model-selection score: validation t2a geometric mean of R@1, R@5, R@10."""
    return float(metrics["t2a"]["geometric_mean"])


# --------------------------------------------------------------------------- records and curves


def write_metrics(history: list[dict], path: Path) -> None:
    """``metrics.jsonl``: one JSON object per epoch (rewritten whole, atomically)."""
    atomic_write_bytes(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in history).encode())


def plot_curves(history: list[dict], path: Path) -> None:
    """``curves.png``: train/validation loss and validation R@1/5/10 (t2a and a2t) per epoch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(11, 4))
    FigureCanvasAgg(fig)
    ax_loss, ax_r = fig.subplots(1, 2)
    ax_loss.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    ax_loss.plot(epochs, [r["val_loss"] for r in history], "s--", label="validation (first caption)")
    ax_loss.set(xlabel="epoch", ylabel="max-margin ranking loss", title="loss")
    ax_loss.legend()
    for direction, style in (("t2a", "-"), ("a2t", ":")):
        for k, colour in (("R1", "C0"), ("R5", "C1"), ("R10", "C2")):
            ax_r.plot(
                epochs, [r["val"][direction][k] for r in history], style, color=colour, marker="o",
                label=f"{direction} {k}",
            )
    best = [r["epoch"] for r in history if r.get("best")]
    if best:
        ax_r.axvline(best[-1], color="grey", lw=0.8, ls="--", label=f"best epoch {best[-1]}")
    ax_r.set(xlabel="epoch", ylabel="recall (%)", title="validation recall")
    for ax in (ax_loss, ax_r):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_r.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)


def summary_line(rec: Mapping) -> str:
    """The one-line epoch summary."""
    t2a, a2t = rec["val"]["t2a"], rec["val"]["a2t"]
    return (
        f"epoch {rec['epoch']:>3}/{rec['epochs']} lr {rec['lr']:.5g} loss {rec['train_loss']:.4f} "
        f"val_loss {rec['val_loss']:.4f} | t2a R@1 {t2a['R1']:.1f} R@5 {t2a['R5']:.1f} R@10 {t2a['R10']:.1f} "
        f"| a2t R@1 {a2t['R1']:.1f} R@5 {a2t['R5']:.1f} R@10 {a2t['R10']:.1f} "
        f"| geo {rec['score']:.2f}{' *best' if rec['best'] else ''} "
        f"| cos a/t {rec['spread']['audio']:.3f}/{rec['spread']['text']:.3f} | {rec['time_s']:.1f}s"
    )


def health_warnings(history: list[dict], margin: float) -> list[str]:
    """What the last epoch says is wrong: collapsed embeddings, or a loss stuck at the margin."""
    rec = history[-1]
    out = []
    for side in ("audio", "text"):
        cos = rec["spread"][side]
        if cos > COLLAPSE_COSINE:
            hint = (
                "the word vectors may be nearly collinear (train:DIM on very few captions, or a wrong "
                "file): try real pretrained vectors (--word2vec FILE)" if side == "text" else
                "the segment features may barely differ between clips: check the features (--features, "
                "--cnn14_checkpoint) and the audio"
            )
            out.append(
                f"epoch {rec['epoch']}: {side} embeddings have collapsed (mean pairwise cosine {cos:.4f} "
                f"> {COLLAPSE_COSINE} in eval mode): every {side} item looks alike; {hint}"
            )
    stuck = [r for r in history[:3] if abs(r["train_loss"] - margin) < STUCK_LOSS_TOL]
    if len(history) >= 3 and len(stuck) == 3:
        out.append(
            f"the training loss stayed at the margin ({margin}) for the first 3 epochs: the model sees "
            "no difference between matching and other pairs; check the collapse figures (cos a/t) "
            "above, try --lr 0.001 or real pretrained word vectors"
        )
    return out


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(
    path: Path, model, optimizer, scheduler, epoch: int, history: list[dict], best: dict
) -> None:
    """Everything needed to continue after ``epoch``, written atomically."""
    atomic_torch_save(
        {
            "kind": "atr-train-checkpoint",
            "version": CHECKPOINT_VERSION,
            "epoch": epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng_state(),
            "history": history,
            "best": dict(best),
        },
        path,
    )


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only`` load)."""
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # truncated file, pickle error, wrong format
        raise CheckpointError(f"{path}: unreadable training checkpoint: {type(exc).__name__}: {exc}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("kind") != "atr-train-checkpoint":
        raise CheckpointError(f"{path}: not an atr training checkpoint")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {ckpt.get('version')} is not supported; "
            f"expected {CHECKPOINT_VERSION}"
        )
    return ckpt


# --------------------------------------------------------------------------- the loop


def fit(
    model,
    optimizer,
    train_source: ClipSource,
    val_source: ClipSource,
    run: RunDir,
    cfg: TrainConfig,
    save_best: Callable[[Path], None],
    device: torch.device,
    resume: bool = False,
    on_epoch_end: Callable[[dict], None] | None = None,
    score_fn: Callable[[Mapping], float] = selection_score,
) -> TrainResult:
    """Train for ``cfg.epochs`` epochs, validating, selecting and checkpointing after each.

    ``save_best(dir)`` writes the current model as the selected one (``model.pt`` ...).
    ``checkpoint.pt`` and ``curves.png`` are written (and a remote run directory uploaded) at most
    every ``cfg.checkpoint_interval_s`` seconds and after the last epoch, so a killed run resumes
    from its last checkpoint; ``metrics.jsonl`` is written every epoch.
    With ``resume`` the state of ``checkpoint.pt`` is restored first (model, optimizer, scheduler,
    RNG states, history) and training continues with the next epoch. ``on_epoch_end(record)``
    runs after the epoch's files are written. ``score_fn(val_metrics)`` is the selection score
    (default: :func:`selection_score`); the highest wins, ties going to the later epoch.
    """
    from atr_core.training.losses import MaxMarginRankingLoss

    loss_fn = MaxMarginRankingLoss(margin=cfg.margin)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=cfg.lr_gamma)
    history: list[dict] = []
    best = {"epoch": 0, "score": float("-inf")}
    start = 1
    if resume:
        ckpt = load_checkpoint(run.path(CHECKPOINT_FILE), device)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
        history, best, start = list(ckpt["history"]), dict(ckpt["best"]), int(ckpt["epoch"]) + 1
        log.info("resuming %s after epoch %d (best so far: epoch %d)", run, start - 1, best["epoch"])
    last_checkpoint = time.monotonic()
    epochs_bar = tqdm(total=cfg.epochs, initial=start - 1, desc="training", unit="epoch",
                      disable=not cfg.progress, dynamic_ncols=True, position=0)
    for epoch in range(start, cfg.epochs + 1):
        t0 = time.perf_counter()
        lr = float(optimizer.param_groups[0]["lr"])
        rec = {"epoch": epoch, "epochs": cfg.epochs, "lr": lr}
        rec.update(train_epoch(model, train_source, optimizer, loss_fn, device, epoch, cfg))
        if cfg.bn_stats == "precise":
            recompute_batchnorm_stats(
                model, train_source, device, cfg.batch_size, epoch, cfg.seed, cfg.bn_batches
            )
        val = evaluate(model, val_source, device, loss_fn, cfg.eval_batch_size)
        scheduler.step()
        score = float(score_fn(val["metrics"]))
        rec.update(val=val["metrics"], val_loss=val["loss"], spread=val["spread"], score=score,
                   best=score >= best["score"])
        rec["time_s"] = time.perf_counter() - t0
        if rec["best"]:
            best = {"epoch": epoch, "score": score}
            save_best(run.local)
        history.append(rec)
        write_metrics(history, run.path(METRICS_FILE))
        if epoch == cfg.epochs or time.monotonic() - last_checkpoint >= cfg.checkpoint_interval_s:
            plot_curves(history, run.path(CURVES_FILE))
            save_checkpoint(run.path(CHECKPOINT_FILE), model, optimizer, scheduler, epoch, history, best)
            run.push()
            last_checkpoint = time.monotonic()
        log.info(summary_line(rec))
        epochs_bar.set_postfix(loss=f"{rec['train_loss']:.4f}", val_geo=f"{score:.1f}",
                               best=best["epoch"], refresh=False)
        epochs_bar.update()
        warned = rec["epoch"] in (min(3, cfg.epochs), cfg.epochs)
        for message in health_warnings(history, cfg.margin) if warned else []:
            log.warning(message)
        if on_epoch_end is not None:
            on_epoch_end(rec)
    epochs_bar.close()
    return TrainResult(history, int(best["epoch"]), float(best["score"]), str(run), resumed_from=start - 1)

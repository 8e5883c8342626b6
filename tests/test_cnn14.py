"""atr_core.audio.cnn14 / .features: segment model vs panns' own Cnn14, checkpoints, import guard."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from atr_core.audio import cnn14
from atr_core.audio.cnn14 import (
    EMBED_DIM,
    HOP,
    OFFICIAL_NAME,
    OFFICIAL_URL,
    SEGMENT_FRAMES,
    SEGMENT_SAMPLES,
    CheckpointInfo,
    Cnn14Segments,
    load_cnn14,
    num_segments,
    official_state_shapes,
    resolve_checkpoint,
)
from atr_core.audio.features import FEATURES, build_feature_model, feature_identity
from atr_core.audio.lms import LogMelSegments
from atr_core.audio.windows import forward_exact_batch, prepare_for_inference
from atr_core.errors import CheckpointError, InputError
from atr_core.runtime.device import resolve_device
from atr_core.runtime.storage import sha256_file
from tests.audio_fixtures import assert_exact
from tests.audio_fixtures import sweep_clip as clip

REPO = Path(__file__).resolve().parents[1]


def test_constants_and_segment_count():
    assert (cnn14.SAMPLE_RATE, HOP, SEGMENT_FRAMES, EMBED_DIM) == (32000, 320, 32, 2048)
    assert SEGMENT_SAMPLES == 10240
    assert OFFICIAL_NAME == "Cnn14_mAP=0.431.pth"
    assert OFFICIAL_URL.startswith("https://zenodo.org/record/3987831/")
    for n in range(0, 200000, 317):
        frames = 1 + n // HOP  # centred STFT
        assert num_segments(n) == frames // SEGMENT_FRAMES
    assert [num_segments(s * 32000) for s in (1, 5, 10, 30)] == [3, 15, 31, 93]


def test_segments_equal_panns_reference(cnn14_model, cnn14_reference):
    for n in [9920, 10240 + 319, 3 * 32000 + 123, 5 * 32000]:
        x = clip(n, seed=n)
        (out,) = forward_exact_batch(cnn14_model, [x])
        assert out.shape == (num_segments(n), EMBED_DIM)
        assert (out >= 0).all()  # post-ReLU, average-pooled
        assert_exact(out, cnn14_reference(x))


@pytest.mark.parametrize("prepared", [False, True], ids=["plain", "prepared"])
def test_mixed_batch_equals_each_clip_alone(cnn14_model, cnn14_reference, prepared):
    """Also for the CPU-prepared model (folded BatchNorm, matmul convs, channels_last)."""
    model = cnn14_model
    if prepared:
        model = prepare_for_inference(pickle.loads(pickle.dumps(cnn14_model)))
        assert model.matmul_convs and model.batchnorm_folded and model.channels_last
    xs = [clip(2.3, seed=1), clip(4.0, seed=2), clip(2.3, seed=3), clip(0.2, seed=4), clip(4.0, seed=5)]
    outs = forward_exact_batch(model, xs)
    assert outs[3].shape == (0, EMBED_DIM)  # shorter than one segment: the pipeline pads it first
    for x, out in zip(xs, outs, strict=True):
        if len(out):
            assert_exact(out, cnn14_reference(x))


def test_state_dict_is_the_official_layout(cnn14_checkpoint, cnn14_model, cnn14_reference):
    ours = cnn14_model.state_dict()
    theirs = cnn14_reference.model.state_dict()
    assert list(ours) == list(theirs)
    assert {k: tuple(v.shape) for k, v in ours.items()} == official_state_shapes()
    ckpt = torch.load(cnn14_checkpoint, weights_only=True)
    assert set(ckpt) == {"model", "iteration"}
    assert all(torch.equal(ckpt["model"][k], ours[k]) for k in ours)
    fresh = Cnn14Segments()
    fresh.load_state_dict(ckpt["model"], strict=True)


def test_loaded_model_is_frozen(cnn14_model):
    assert not cnn14_model.training
    assert not any(p.requires_grad for p in cnn14_model.parameters())
    cnn14_model.train()  # a frozen extractor stays in eval mode
    assert not cnn14_model.training and not cnn14_model.bn0.training


def test_random_weights_are_seeded_and_match_the_saved_checkpoint(cnn14_model):
    info = resolve_checkpoint("random:0")
    assert info == CheckpointInfo("random:0", None, "") and info.random_seed == 0
    model = load_cnn14(info)
    ref = cnn14_model.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())
    other = cnn14.init_random_(model, 1).state_dict()
    assert not torch.equal(other["conv_block1.conv1.weight"], ref["conv_block1.conv1.weight"])
    assert not torch.equal(ref["bn0.running_mean"], torch.zeros(64))  # BatchNorms are non-trivial


def test_pickle_names_no_panns_module(cnn14_model):
    data = pickle.dumps(cnn14_model)
    assert b"panns_inference" not in data and b"atr_core.audio.cnn14" in data


# ----------------------------------------------------------------------------- checkpoint errors


def checkpoint_error(spec, **kwargs) -> str:
    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint(spec, **kwargs)
    msg = str(info.value)
    assert "--cnn14_checkpoint" in msg and OFFICIAL_URL in msg
    return msg


def test_missing_spec_explains_where_to_get_weights():
    for spec in (None, "", "   "):
        checkpoint_error(spec)


def test_not_found_and_not_torch(tmp_path):
    assert "no such file" in checkpoint_error(str(tmp_path / "Cnn14_mAP=0.431.pth"))
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    assert "not a readable" in checkpoint_error(str(text))


class NotAWeight:
    pass


def test_wrong_layouts(tmp_path):
    shapes = official_state_shapes()
    cases = {
        "list": ([1, 2, 3], "expected a dict"),
        "nomodel": ({"state_dict": {}}, "no 'model'"),
        "notensors": ({"model": {"a": 1}}, "not a state_dict of tensors"),
        "fewkeys": ({"model": {"bn0.weight": torch.ones(64)}}, "83 missing keys"),
        "extra": ({"model": {"bn0.weight": torch.ones(64), "x": torch.ones(1)}}, "unexpected keys (e.g. ['x"),
        "shapes": ({"model": {k: torch.zeros(1) for k in shapes}}, "bn0.bias (1,) != (64,)"),
        "object": ({"model": {}, "obj": NotAWeight()}, "not a readable weights-only"),
    }
    assert len(shapes) == 84
    for name, (obj, expected) in cases.items():
        path = tmp_path / f"{name}.pth"
        torch.save(obj, path)
        assert expected in checkpoint_error(str(path)), name


def test_numpy_and_legacy_files_are_readable(tmp_path):
    """Training-time saves carry numpy sampler state; old files use the legacy format.

    Both must get past the weights-only read and fail only on the (deliberately wrong) keys.
    """
    sampler = {"queue": np.arange(4), "pointer": np.int64(2), "probs": np.ones((2, 3), np.float32)}
    obj = {"model": {"bn0.weight": torch.ones(64)}, "iteration": 5, "sampler": sampler}
    torch.save(obj, tmp_path / "numpy.pth")
    torch.save(obj, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    for name in ("numpy.pth", "legacy.pth"):
        assert "missing keys" in checkpoint_error(str(tmp_path / name))


def test_sha256_checked_and_recorded(cnn14_checkpoint):
    digest = sha256_file(cnn14_checkpoint)
    info = resolve_checkpoint(str(cnn14_checkpoint))
    assert info == CheckpointInfo(str(cnn14_checkpoint), str(cnn14_checkpoint), digest)
    assert resolve_checkpoint(str(cnn14_checkpoint), sha256=digest.upper()).sha256 == digest
    assert "sha256 mismatch" in checkpoint_error(str(cnn14_checkpoint), sha256="0" * 64)


def test_random_spec_errors():
    assert "integer seed" in checkpoint_error("random:abc")
    assert "integer seed" in checkpoint_error("random:-1")
    assert "sha256" in checkpoint_error("random:0", sha256="ab" * 32)


def test_load_refetches_when_the_local_copy_is_elsewhere(cnn14_checkpoint, cnn14_model):
    """On a worker, ``local_path`` (from the launcher) may not exist: the spec is fetched again."""
    digest = sha256_file(cnn14_checkpoint)
    model = load_cnn14(CheckpointInfo(str(cnn14_checkpoint), "/nonexistent/launcher/copy.pth", digest))
    assert torch.equal(model.fc1.weight, cnn14_model.fc1.weight)
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_cnn14(CheckpointInfo(str(cnn14_checkpoint), None, "0" * 64))


# ----------------------------------------------------------------------------- device, registry


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InputError, match="expected auto, cpu or cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            resolve_device("cuda")


def test_feature_registry(cnn14_checkpoint):
    assert FEATURES == {"cnn14": 2048, "lms": 64}
    assert isinstance(build_feature_model("lms", None, "cpu"), LogMelSegments)
    with pytest.raises(CheckpointError, match="--cnn14_checkpoint"):
        build_feature_model("cnn14", None, "cpu")
    with pytest.raises(InputError, match="unknown feature"):
        build_feature_model("vggish", None, "cpu")
    info = CheckpointInfo(str(cnn14_checkpoint), str(cnn14_checkpoint), "ab" * 32)
    ident = feature_identity("cnn14", info)
    assert (ident.feature, ident.embedding_dim, ident.checkpoint, ident.checkpoint_sha256) == (
        "cnn14",
        2048,
        str(cnn14_checkpoint),
        "ab" * 32,
    )
    lms = feature_identity("lms", None)
    assert (lms.feature, lms.embedding_dim, lms.checkpoint, lms.checkpoint_sha256) == ("lms", 64, "", "")


# ----------------------------------------------------------------------------- import side effects


def run_isolated(code: str, home: Path, setup: str = "") -> str:
    """Run ``setup`` then ``code`` in a fresh interpreter with HOME=home; ``code`` may not use
    the network or start processes."""
    prelude = textwrap.dedent(setup) + textwrap.dedent(
        """
        import os, socket, subprocess, sys
        def _refuse(*a, **k):
            raise AssertionError("network or shell use during import: %r" % (a[:1],))
        socket.socket.connect = _refuse
        socket.create_connection = _refuse
        os.system = _refuse
        subprocess.Popen.__init__ = _refuse
        """
    )
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": str(REPO)}
    env.pop("MPLCONFIGDIR", None)
    env.pop("XDG_CACHE_HOME", None)
    env.pop("XDG_CONFIG_HOME", None)
    res = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def test_import_touches_no_network_and_writes_nothing(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    out = run_isolated(
        """
        import atr_core.audio.cnn14, atr_core.audio.features, atr_core.audio.windows
        import atr_core.audio.decode, atr_core.audio.lms
        import torch
        m = atr_core.audio.cnn14.Cnn14Segments()
        y = m(torch.zeros(1, 9920))
        assert tuple(y.shape) == (1, 1, 2048)
        print(sorted(k for k in sys.modules if k.startswith(("panns_inference", "matplotlib"))))
        """,
        home,
    )
    assert "panns_inference.config" not in out and "matplotlib" not in out
    assert "panns_inference.models" in out
    assert list(home.rglob("*")) == []


def test_real_package_already_imported(tmp_path):
    home = tmp_path / "home"
    (home / "panns_data").mkdir(parents=True)  # config.py's wget is skipped when the CSV exists
    csv = home / "panns_data" / "class_labels_indices.csv"
    csv.write_text("index,mid,display_name\n0,/m/09x0r,Speech\n")
    run_isolated(
        """
        import atr_core.audio.cnn14 as c
        assert hasattr(panns_inference, "AudioTagging")  # the real package, left in place
        assert issubclass(c.Cnn14Segments, panns_inference.models.Cnn14)
        """,
        home,
        setup="import panns_inference, panns_inference.models  # the user's own import, before ours\n",
    )


def test_skipped_weight_init_is_scoped_and_loading_still_exact(cnn14_model):
    originals = {name: getattr(torch.nn.init, name) for name in cnn14._INIT_FUNCTIONS}
    with pytest.raises(RuntimeError, match="inside"):
        with cnn14.skipped_weight_init():
            assert torch.nn.init.xavier_uniform_ is not originals["xavier_uniform_"]
            raise RuntimeError("inside")
    assert all(getattr(torch.nn.init, n) is fn for n, fn in originals.items())  # restored after errors
    bare = Cnn14Segments(init_weights=False)
    bare.load_state_dict(cnn14_model.state_dict(), strict=True)
    x = torch.from_numpy(clip(2.0, seed=5))[None]
    with torch.inference_mode():
        assert torch.equal(bare(x), cnn14_model(x))

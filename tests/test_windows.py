"""atr_core.audio.windows: window plans, stitching, and exactness against whole-clip reference runs."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from atr_core.audio.cnn14 import SEGMENT_SAMPLES, num_segments
from atr_core.audio.windows import (
    DEFAULT_CONTEXT_SEGMENTS,
    DEFAULT_MAX_WINDOW_S,
    Window,
    extract_batch,
    extract_clip,
    forward_exact_batch,
    plan_windows,
    prepare_for_inference,
    stitch,
)
from atr_core.errors import InputError
from tests.audio_fixtures import assert_exact
from tests.audio_fixtures import sweep_clip as clip

SR = 32000


# ----------------------------------------------------------------------------- plans (pure)


def check_plan(n: int, max_window: int, context: int) -> list[Window]:
    plan = plan_windows(n, max_window, context)
    total = num_segments(n)
    assert [w.index for w in plan] == list(range(len(plan)))
    assert plan[0].start == 0
    if n <= max_window:
        assert plan == [Window(0, 0, n, 0, total, 0)]
        return plan
    if context > 0:  # the last window ends at the clip end (with no context it may be unneeded)
        assert plan[-1].end == n
    width = (max_window // SEGMENT_SAMPLES) * SEGMENT_SAMPLES
    assert all(w.length == width for w in plan[:-1])  # first and interior windows batch together
    for w in plan:
        assert w.start % SEGMENT_SAMPLES == 0 and 0 < w.length <= max_window and w.end <= n
        local = num_segments(w.length)
        assert 0 <= w.keep_from < w.keep_to <= local
        assert w.out_offset == w.start // SEGMENT_SAMPLES + w.keep_from
        if w.start > 0:
            assert w.keep_from >= context  # computed left context, thrown away
        if w.end < n:
            assert w.keep_to <= local - context  # computed right context, thrown away
    # Local segment i of a window is clip segment start/10240 + i: stitching those indices
    # must give 0..T-1, which checks coverage (each segment once) and the offsets together.
    parts = [(w, (w.start // SEGMENT_SAMPLES + np.arange(num_segments(w.length)))[:, None]) for w in plan]
    np.testing.assert_array_equal(stitch(total, parts)[:, 0], np.arange(total))
    return plan


def test_plan_properties_over_random_lengths():
    rng = np.random.default_rng(0)
    multi = 0
    for _ in range(3000):
        context = int(rng.integers(0, 9))
        max_window = int(rng.integers((2 * context + 1) * SEGMENT_SAMPLES, 80 * SEGMENT_SAMPLES))
        n = int(rng.integers(0, 12 * max_window))
        multi += len(check_plan(n, max_window, context)) > 2
    assert multi > 1000


def test_plan_edge_lengths():
    mw = 8 * SR
    for n in [0, 1, 9919, 9920, mw - 1, mw, mw + 1, mw + SEGMENT_SAMPLES, 3 * mw + 7, 100 * mw + 12345]:
        check_plan(n, mw, DEFAULT_CONTEXT_SEGMENTS)
    assert len(plan_windows(int(30 * SR))) == 1  # a Clotho clip runs whole with the default 60 s
    assert DEFAULT_MAX_WINDOW_S == 60.0


def test_plan_rejects_a_window_smaller_than_its_context():
    with pytest.raises(InputError, match="too small"):
        plan_windows(10 * SR, 12 * SEGMENT_SAMPLES, context_segments=6)
    check_plan(10 * SR, 13 * SEGMENT_SAMPLES, 6)  # the smallest allowed


def test_stitch_rejects_gaps_and_overlaps():
    a = np.ones((10, 3), np.float32)
    with pytest.raises(ValueError, match="segment 5"):
        stitch(10, [(Window(0, 0, 0, 0, 5, 0), a)])
    with pytest.raises(ValueError, match="covered 2 times"):
        stitch(6, [(Window(0, 0, 0, 0, 4, 0), a), (Window(1, 0, 0, 1, 4, 3), a)])


# ----------------------------------------------------------------------------- LMS exactness (cheap)


@pytest.fixture(scope="module")
def lms(lms_model):
    return lms_model


def whole(model, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(x)[None])[0].numpy()


def test_lms_windows_are_exact_over_random_lengths(lms):
    rng = np.random.default_rng(2)
    max_window = 13 * SEGMENT_SAMPLES  # 4.16 s: most clips below need several windows
    for i in range(6):
        x = clip(int(rng.integers(9920, 13 * SR)), seed=i)
        assert_exact(extract_clip(lms, x, max_window, DEFAULT_CONTEXT_SEGMENTS), whole(lms, x))


def test_lms_without_context_is_not_exact(lms):
    """Negative control: window edges do change nearby segments, so the context matters."""
    x = clip(20.0, seed=3)
    got = extract_clip(lms, x, 13 * SEGMENT_SAMPLES, context_segments=0)
    want = whole(lms, x)
    assert np.abs(got - want).max() > 1e-2 * np.abs(want).max()


def test_forward_exact_batch_groups_equal_lengths_only(lms):
    rng = np.random.default_rng(4)
    lengths = [40000, 50000, 40000, 9000, 77777, 50000, 40000]
    xs = [clip(n, seed=int(rng.integers(1 << 30))) for n in lengths]
    calls: list[tuple[int, ...]] = []
    handle = lms.register_forward_pre_hook(lambda _m, args: calls.append(tuple(args[0].shape)))
    try:
        outs = forward_exact_batch(lms, xs, max_batch_samples=2 * 40000)
    finally:
        handle.remove()
    # at most 80000 samples a call: 40000 x 2 + 40000, 50000 alone twice; the 9000 clip never runs
    assert sorted(calls) == [(1, 40000), (1, 50000), (1, 50000), (1, 77777), (2, 40000)]
    for x, out in zip(xs, outs, strict=True):
        assert out.shape == (num_segments(len(x)), 64)
        assert_exact(out, whole(lms, x)) if len(out) else None
    assert outs[3].shape == (0, 64)  # too short for a segment: no model call


# ----------------------------------------------------------------------------- CNN14 exactness


@pytest.fixture(scope="module")
def long_clips(cnn14_reference):
    """Clips of 3 and 2 windows at an 8 s max window and a short one, with whole-clip references."""
    xs = [clip(13.7, seed=10), clip(11.1, seed=11), clip(3 * SR + 4321, seed=12)]
    return xs, [cnn14_reference(x) for x in xs]


MAX_WINDOW_8S = 8 * SR


def test_cnn14_long_clips_windowed_and_batched_are_exact(cnn14_model, long_clips):
    xs, refs = long_clips
    plans = [plan_windows(len(x), MAX_WINDOW_8S) for x in xs]
    assert [len(p) for p in plans] == [3, 2, 1]
    assert plans[0][1].length == plans[1][0].length  # windows of different clips share a batch
    outs = extract_batch(cnn14_model, xs, MAX_WINDOW_8S, DEFAULT_CONTEXT_SEGMENTS)
    for out, ref in zip(outs, refs, strict=True):
        assert out.shape == (len(ref), 2048)
        assert_exact(out, ref)


def test_cnn14_too_little_context_is_not_exact(cnn14_model, long_clips):
    """Negative control: 2 segments of context are inside CNN14's receptive field."""
    xs, refs = long_clips
    got = extract_clip(cnn14_model, xs[0], MAX_WINDOW_8S, context_segments=2)
    assert np.abs(got - refs[0]).max() > 1e-3 * np.abs(refs[0]).max()


def test_cnn14_pickled_channels_last_copy_is_exact(cnn14_model, long_clips):
    xs, refs = long_clips
    fast = prepare_for_inference(pickle.loads(pickle.dumps(cnn14_model)), channels_last=True)
    assert fast is not cnn14_model and not cnn14_model.channels_last
    assert fast.channels_last and not fast.training
    assert fast.conv_block1.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert_exact(extract_clip(fast, xs[1], MAX_WINDOW_8S), refs[1])


def test_cnn14_folded_batchnorm_is_exact_and_pickles(cnn14_model, long_clips):
    xs, refs = long_clips
    fast = prepare_for_inference(pickle.loads(pickle.dumps(cnn14_model)), channels_last=True)
    assert fast.batchnorm_folded and not cnn14_model.batchnorm_folded
    assert isinstance(fast.conv_block3.bn2, torch.nn.Identity) and fast.conv_block3.conv2.bias is not None
    assert "conv_block3.bn2.running_mean" not in fast.state_dict()
    assert_exact(extract_clip(fast, xs[1], MAX_WINDOW_8S), refs[1])
    again = pickle.loads(pickle.dumps(fast))  # a folded model pickles with its folded keys
    assert again.batchnorm_folded
    with torch.inference_mode():
        x = torch.from_numpy(xs[0][: 4 * 32000])[None]
        assert torch.equal(again(x), fast(x))


def test_cnn14_unfolded_keeps_batchnorm(cnn14_model):
    plain = prepare_for_inference(pickle.loads(pickle.dumps(cnn14_model)), fold_batchnorm=False)
    assert not plain.batchnorm_folded and isinstance(plain.conv_block1.bn1, torch.nn.BatchNorm2d)


def test_cnn14_matmul_convs_are_exact_and_pickle(cnn14_model, long_clips):
    from atr_core.audio.cnn14 import MATMUL_CONVS
    from atr_core.audio.matmul_conv import PatchMatmulConv2d

    xs, refs = long_clips
    fast = prepare_for_inference(pickle.loads(pickle.dumps(cnn14_model)))  # CPU: on by default
    assert fast.matmul_convs and not cnn14_model.matmul_convs
    swapped = [type(fast.get_submodule(name)) for name in MATMUL_CONVS]
    assert swapped == [PatchMatmulConv2d] * 3
    assert type(fast.conv_block5.conv2) is torch.nn.Conv2d  # oneDNN's conv is fast there
    assert type(fast.spectrogram_extractor.stft.conv_real) is torch.nn.Conv1d  # see the next test
    assert fast.state_dict().keys() == prepare_for_inference(
        pickle.loads(pickle.dumps(cnn14_model)), matmul_convs=False
    ).state_dict().keys()
    assert_exact(extract_clip(fast, xs[0], MAX_WINDOW_8S), refs[0])
    again = pickle.loads(pickle.dumps(fast))
    assert again.matmul_convs and isinstance(again.conv_block6.conv2, PatchMatmulConv2d)
    with torch.inference_mode():
        x = torch.from_numpy(xs[2])[None]
        assert torch.equal(again(x), fast(x))


def test_cnn14_matmul_convs_can_be_turned_off(cnn14_model):
    plain = prepare_for_inference(pickle.loads(pickle.dumps(cnn14_model)), matmul_convs=False)
    assert not plain.matmul_convs and type(plain.conv_block6.conv1) is torch.nn.Conv2d


def test_cnn14_fast_model_is_exact_on_a_pure_tone(cnn14_model, cnn14_reference):
    """A pure tone leaves most STFT bins near zero, where the log amplifies rounding: the STFT
    stays on torch's conv (as a matmul it moved 1.3e-4 of the output scale)."""
    t = np.arange(int(1.6 * SR)) / SR
    tone = (0.5 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
    fast = prepare_for_inference(pickle.loads(pickle.dumps(cnn14_model)))
    got = extract_clip(fast, tone)
    ref = cnn14_reference(tone)
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()


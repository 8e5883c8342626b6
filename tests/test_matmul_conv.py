"""The matmul convolutions equal torch's own, share their parameters and refuse what they can't do."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from atr_core.audio.matmul_conv import PatchMatmulConv2d


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.detach().double(), ref.detach().double()
    return float((got - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize(
    "in_ch,out_ch,kernel,padding,bias,channels_last",
    [
        (1, 8, 3, 1, True, True),  # CNN14's first conv
        (16, 32, 3, 1, False, True),
        (16, 32, 3, 1, True, False),  # NCHW input works too
        (4, 6, (3, 5), (1, 2), True, True),  # rectangular kernel, "same" padding
        (4, 6, 3, 0, True, True),  # valid convolution shrinks the map
        (5, 7, (2, 1), (0, 0), False, False),
    ],
)
def test_patch_matmul_conv2d_equals_conv2d(in_ch, out_ch, kernel, padding, bias, channels_last):
    torch.manual_seed(0)
    conv = nn.Conv2d(in_ch, out_ch, kernel, padding=padding, bias=bias).eval()
    x = torch.randn(3, in_ch, 11, 6)
    if channels_last:
        conv.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    fast = PatchMatmulConv2d.from_conv(conv)
    with torch.inference_mode():
        ref, got = conv(x), fast(x)
    assert got.shape == ref.shape
    assert rel_err(got, ref) < 1e-6
    assert got.is_contiguous(memory_format=torch.channels_last)


def test_patch_matmul_conv2d_shares_parameters_and_state_dict():
    conv = nn.Conv2d(4, 6, 3, padding=1)
    fast = PatchMatmulConv2d.from_conv(conv)
    assert fast.weight is conv.weight and fast.bias is conv.bias
    assert list(fast.state_dict()) == list(conv.state_dict())
    with torch.no_grad():
        conv.weight.add_(1.0)  # the same tensor: the matmul module sees the change
    x = torch.randn(2, 4, 5, 5)
    assert rel_err(fast(x), conv(x)) < 1e-6


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(4, 6, 3, stride=2, padding=1),
        nn.Conv2d(4, 6, 3, padding=1, dilation=2),
        nn.Conv2d(4, 6, 3, padding=1, groups=2),
        nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect"),
        nn.Conv2d(4, 6, 3, padding="same"),
    ],
)
def test_patch_matmul_conv2d_refuses_other_convs(conv):
    with pytest.raises(ValueError, match="(?i)conv"):
        PatchMatmulConv2d.from_conv(conv)


def test_matmul_convs_backpropagate_like_torch():
    """Not used for training, but the gradient is the conv's (autograd through cat/matmul)."""
    torch.manual_seed(2)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 6, 5, requires_grad=True)
    (g_ref,) = torch.autograd.grad(conv(x).square().sum(), x)
    (g_got,) = torch.autograd.grad(PatchMatmulConv2d.from_conv(conv)(x).square().sum(), x)
    assert rel_err(g_got, g_ref) < 1e-5

"""Convolutions computed as one matrix product: the same function, a faster kernel on some CPU shapes.

oneDNN's direct convolution is slow on two kinds of CNN14 layers on CPU: a conv with a single
input channel (the first conv, 1 -> 64 over 1001 x 64 log-mel frames) and convs over tiny feature
maps (conv_block6, 1024/2048 -> 2048 over 31 x 2). There, gathering the input patches into a
matrix and calling one BLAS matrix product is 1.5-3.5x faster, and as exact (docs/features.md,
"Matmul convs"). :class:`PatchMatmulConv2d` subclasses the ``Conv2d`` it replaces, so parameters,
state_dict keys and shapes stay the same; only ``forward`` differs. It keeps torch's weight
layout: a ``Conv2d`` weight in channels_last memory format is already laid out as the
(out, kh, kw, in) matrix the product needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchMatmulConv2d(nn.Conv2d):
    """A stride-1 ``Conv2d`` as one matrix product: (B*H*W, kh*kw*C) patches @ (kh*kw*C, out).

    The patches are gathered from a channels-last view of the zero-padded input; the output is
    returned in channels-last memory format. Costs an extra (B, H, W, kh*kw*C) buffer, small
    where it is used (the 1-channel first conv; conv_block6's 31 x 2 maps).
    """

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> PatchMatmulConv2d:
        """The matmul version of ``conv``, sharing its parameters.

        Raises ValueError unless ``conv`` is a dense, stride-1, zero-padded convolution with
        numeric padding.
        """
        if conv.groups != 1 or any(d != 1 for d in conv.dilation) or conv.padding_mode != "zeros":
            raise ValueError(f"unsupported conv for a matmul kernel: {conv}")
        if isinstance(conv.padding, str):
            raise ValueError(f"string padding is not supported by the matmul kernel: {conv}")
        if conv.stride != (1, 1):
            raise ValueError(f"PatchMatmulConv2d needs stride 1: {conv}")
        new = cls(  # built on the meta device (no allocation, no init), then given conv's parameters
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            padding=conv.padding,
            bias=conv.bias is not None,
            device="meta",
        )
        new.weight, new.bias = conv.weight, conv.bias  # the same tensors, not copies
        return new.train(conv.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        batch, channels, height, width = x.shape
        kh, kw = self.kernel_size
        ph, pw = self.padding
        out_h, out_w = height + 2 * ph - kh + 1, width + 2 * pw - kw + 1
        padded = F.pad(x, (pw, pw, ph, ph)).permute(0, 2, 3, 1)  # (B, H+2ph, W+2pw, C)
        patches = torch.cat(
            [padded[:, i : i + out_h, j : j + out_w] for i in range(kh) for j in range(kw)], dim=-1
        ).reshape(batch * out_h * out_w, kh * kw * channels)
        # (out, kh, kw, C): a view when the weight is channels_last, else one copy.
        weight = self.weight.permute(0, 2, 3, 1).reshape(self.out_channels, -1).t()
        if self.bias is None:
            out = patches @ weight
        else:
            out = torch.addmm(self.bias, patches, weight)
        return out.view(batch, out_h, out_w, self.out_channels).permute(0, 3, 1, 2)

"""Aggregation (pooling) modules: a (B, N, D) sequence with a (B, N) mask -> one (B, out_dim) vector.

Reference section 4 and project decision 2. Every module takes the mask; valid rows need not be a
prefix except for :class:`LSTMPool` (packed sequences: valid rows first). With ``use_mask=True``
(the default) padded rows never influence an output: not through the soft assignment, not through
the BatchNorm statistics, not through the max, and not even when they hold garbage (NaN included).
``use_mask=False`` gives the authors' unmasked NetVLAD / NetRVLAD / max behaviour (padding enters
the BatchNorm statistics, NetVLAD's assignment sums and the max); mean and LSTM pooling always mask,
as the authors' code does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from atr_core.errors import InputError

AGGREGATIONS = ("mean", "max", "lstm", "netvlad", "netrvlad")


def valid_mask(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Boolean (B, N) mask of the valid rows of ``x`` (all rows when ``mask`` is None)."""
    if mask is None:
        return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    if mask.shape != x.shape[:2]:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match input shape {tuple(x.shape)}")
    return mask.to(device=x.device) > 0


def zero_padding(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``x`` with padded rows replaced by exact zeros (NaN/inf in padding included)."""
    return x.masked_fill(~valid.unsqueeze(-1), 0.0)


def masked_mean_of_unit_steps(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Reference 4.3: per-step x/(|x|+1e-8), mean over the valid steps (count >= 1), then L2."""
    x = zero_padding(x, valid)
    x = x / (x.norm(dim=-1, keepdim=True) + 1e-8)
    count = valid.sum(dim=1, keepdim=True).clamp(min=1).to(x.dtype)
    return F.normalize(x.sum(dim=1) / count, dim=-1)


class MeanPool(nn.Module):
    """Mean pooling (4.3): per-step L2, masked mean, L2. out_dim = D."""

    def __init__(self, dim: int):
        super().__init__()
        self.out_dim = dim

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return masked_mean_of_unit_steps(x, valid_mask(x, mask))


class MaxPool(nn.Module):
    """Element-wise max over the valid rows (4.4, masked). out_dim = D.

    No normalisation here: the audio encoder L2-renormalises its pooled vector, the text encoder
    does not (4.4, 4.6). A sequence with no valid row gives zeros. ``use_mask=False``: max over
    all N rows, padding included (the authors' behaviour).
    """

    def __init__(self, dim: int, use_mask: bool = True):
        super().__init__()
        self.out_dim = dim
        self.use_mask = use_mask

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if not self.use_mask:
            return x.amax(dim=1)
        valid = valid_mask(x, mask)
        out = x.masked_fill(~valid.unsqueeze(-1), -math.inf).amax(dim=1)
        return out.masked_fill(~valid.any(dim=1, keepdim=True), 0.0)


class LSTMPool(nn.Module):
    """One-layer unidirectional LSTM on the packed valid prefix, then mean pooling of the outputs (4.5).

    out_dim = hidden. The valid rows must be a prefix of each sequence (lengths = mask sums).
    """

    def __init__(self, dim: int, hidden: int = 2048):
        super().__init__()
        self.out_dim = hidden
        self.lstm = nn.LSTM(input_size=dim, hidden_size=hidden, num_layers=1, batch_first=True)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        valid = valid_mask(x, mask)
        lengths = valid.sum(dim=1)
        packed = pack_padded_sequence(
            zero_padding(x, valid), lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False
        )
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        steps = torch.arange(x.shape[1], device=x.device).unsqueeze(0) < lengths.unsqueeze(1)
        return masked_mean_of_unit_steps(out, steps)


class NetRVLAD(nn.Module):
    """NetRVLAD (4.1): soft assignment without centres. out_dim = D * K.

    logits = X C (C ~ N(0,1)/sqrt(D)), BatchNorm1d(K) on the logits of the valid rows only,
    softmax over K, V[b,d,k] = sum_n a[b,n,k] X[b,n,d], intra L2 over d, flatten d-major
    (index d*K + k), global L2.
    """

    has_centres = False

    def __init__(self, dim: int, clusters: int, use_mask: bool = True):
        super().__init__()
        self.dim = dim
        self.clusters = clusters
        self.use_mask = use_mask
        self.out_dim = dim * clusters
        init_sc = 1.0 / math.sqrt(dim)
        self.cluster_weights = nn.Parameter(init_sc * torch.randn(dim, clusters))
        if self.has_centres:
            self.centres = nn.Parameter(init_sc * torch.randn(1, dim, clusters))
        self.batch_norm = nn.BatchNorm1d(clusters)

    def assignments(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, N, K) soft assignments; exactly zero on padded rows when masking."""
        b, n, _ = x.shape
        logits = x @ self.cluster_weights
        if not self.use_mask:
            logits = self.batch_norm(logits.reshape(b * n, self.clusters))
            return F.softmax(logits, dim=-1).reshape(b, n, self.clusters)
        probs = F.softmax(self.batch_norm(logits[valid]), dim=-1)
        a = probs.new_zeros(b, n, self.clusters)
        a[valid] = probs
        return a

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if x.shape[-1] != self.dim:
            raise ValueError(f"expected feature dim {self.dim}, got input shape {tuple(x.shape)}")
        valid = valid_mask(x, mask)
        if self.use_mask:
            x = zero_padding(x, valid)
        a = self.assignments(x, valid)
        vlad = torch.einsum("bnk,bnd->bdk", a, x)
        if self.has_centres:
            vlad = vlad - a.sum(dim=1).unsqueeze(1) * self.centres
        vlad = F.normalize(vlad, dim=1)
        return F.normalize(vlad.reshape(x.shape[0], self.out_dim), dim=-1)


class NetVLAD(NetRVLAD):
    """NetVLAD (4.2): NetRVLAD plus learned centres c (N(0,1)/sqrt(D)) subtracted, weighted by the
    assignment mass (valid rows only when masking). out_dim = D * K."""

    has_centres = True


def check_aggregation(name: str) -> str:
    """``name`` if it is a known aggregation, else :class:`InputError` listing the choices."""
    if name not in AGGREGATIONS:
        raise InputError(f"unknown aggregation {name!r}; choose one of {', '.join(AGGREGATIONS)}")
    return name


def build_aggregation(
    name: str, dim: int, clusters: int = 0, hidden: int = 2048, use_mask: bool = True
) -> nn.Module:
    """Aggregation module by name: ``mean|max|lstm|netvlad|netrvlad`` (``clusters`` for the VLADs)."""
    check_aggregation(name)
    if name == "mean":
        return MeanPool(dim)
    if name == "max":
        return MaxPool(dim, use_mask=use_mask)
    if name == "lstm":
        return LSTMPool(dim, hidden)
    if clusters < 1:
        raise InputError(f"aggregation {name} needs clusters >= 1, got {clusters}")
    cls = NetVLAD if name == "netvlad" else NetRVLAD
    return cls(dim, clusters, use_mask=use_mask)

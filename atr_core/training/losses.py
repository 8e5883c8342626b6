"""Training loss: bidirectional max-margin ranking (reference sections 5-6)."""

from __future__ import annotations

import torch
from torch import nn

REDUCTIONS = ("mean", "batch")


class MaxMarginRankingLoss(nn.Module):
    """Bidirectional hinge loss on a square similarity matrix S (rows text i, columns audio j).

    L = 1/(2n(n-1)) * sum_{i != j} [max(0, m - S_ii + S_ij) + max(0, m - S_ii + S_ji)]

    ``reduction="mean"`` (default) is the mean over the 2n(n-1) off-diagonal hinges, as in the
    authors' code (``fix_norm=True``); ``reduction="batch"`` divides the same sum by n instead
    (the paper's eq. 9 as printed). The two differ by the constant factor 2(n-1). n = 1 gives 0.
    """

    def __init__(self, margin: float = 0.2, reduction: str = "mean"):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}; choose one of {', '.join(REDUCTIONS)}")
        self.margin = margin
        self.reduction = reduction

    def forward(self, sim: torch.Tensor) -> torch.Tensor:
        if sim.dim() != 2 or sim.shape[0] != sim.shape[1]:
            raise ValueError(f"expected a square similarity matrix, got shape {tuple(sim.shape)}")
        n = sim.shape[0]
        if n < 2:
            return sim.sum() * 0.0
        diag = sim.diagonal().unsqueeze(1)
        t2a = (self.margin - diag + sim).clamp(min=0)  # [i, j]: text i against audio j
        a2t = (self.margin - diag + sim.T).clamp(min=0)  # [i, j]: audio i against text j
        off = ~torch.eye(n, dtype=torch.bool, device=sim.device)
        total = (t2a + a2t)[off].sum()
        return total / (2 * n * (n - 1)) if self.reduction == "mean" else total / n


def clip_averaged_similarity(sims: torch.Tensor, caption_clip: torch.Tensor, n_clips: int) -> torch.Tensor:
    """Average caption-vs-clip similarities over each clip's own captions.

    ``sims`` is (C, B): rows are captions, ``caption_clip[c]`` the clip of caption c. Returns
    (B, B) whose (i, j) entry is the mean over clip i's captions of s(caption, clip j). Clips may
    have different caption counts; with Q captions each in audio-major order this is the authors'
    ``reshape(B, Q, B).mean(1)`` (reference section 5). Computed as a matmul with an averaging
    matrix, which is deterministic and differentiable.
    """
    member = (caption_clip[None, :] == torch.arange(n_clips, device=sims.device)[:, None]).to(sims.dtype)
    counts = member.sum(dim=1, keepdim=True)
    if bool((counts == 0).any()):
        raise ValueError("every clip of a batch needs at least one caption")
    return (member / counts) @ sims




def caption_averaged_similarity(
    text_emb: torch.Tensor, audio_emb: torch.Tensor, captions_per_clip: int
) -> torch.Tensor:
    """(B, B) similarities averaged over each clip's Q captions (reference 5, training).

    ``text_emb`` is (B*Q, E) in audio-major order (row j*Q + c = caption c of clip j);
    entry (i, j) is the mean over clip i's captions of cos(caption, audio j): the authors'
    ``reshape(B, Q, B).mean(1)``, i.e. :func:`clip_averaged_similarity` with Q captions per clip.
    """
    b, q = audio_emb.shape[0], captions_per_clip
    if q < 1 or text_emb.shape[0] != b * q:
        raise ValueError(
            f"text_emb has {text_emb.shape[0]} rows; expected {b} clips x {q} captions = {b * q}"
        )
    owner = torch.arange(b, device=text_emb.device).repeat_interleave(q)
    return clip_averaged_similarity(text_emb @ audio_emb.T, owner, b)

"""Fusion heads: Perceiver-style cross-attention and the early/late/attention baselines.

All heads take the tokens of every modality, ``tokens`` (B, L, d), ``mask`` (B, L) with
True for real tokens, and ``groups`` (B, L) with the modality group of each token
(0 image, 1 notes, 2 labs, 3 vitals, 4 demographics). Every row of ``mask`` has at least
one True entry, because a missing modality contributes its learned missing token: no
attention row is ever fully masked (which would give NaN).
"""

from __future__ import annotations

import torch
from torch import nn

from fusion.model.encoders import FeedForward

N_GROUPS = 5


def pool_groups(tokens: torch.Tensor, mask: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Masked mean of the tokens of each group: (B, L, d) -> (B, N_GROUPS, d)."""
    one_hot = nn.functional.one_hot(groups, N_GROUPS).to(tokens.dtype)
    one_hot = one_hot * mask.unsqueeze(-1).to(tokens.dtype)
    sums = torch.einsum("blg,bld->bgd", one_hot, tokens)
    counts = one_hot.sum(dim=1).clamp(min=1.0).unsqueeze(-1)
    return sums / counts


class CrossAttentionBlock(nn.Module):
    """Latents attend to all tokens, then to each other (pre-norm, residual)."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.norm_latent = nn.LayerNorm(d_model)
        self.norm_tokens = nn.LayerNorm(d_model)
        self.cross = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.cross_ff = FeedForward(d_model, dropout)
        self.norm_self = nn.LayerNorm(d_model)
        self.self_attention = nn.MultiheadAttention(
            d_model, n_heads, dropout=dropout, batch_first=True
        )
        self.self_ff = FeedForward(d_model, dropout)

    def forward(
        self, latents: torch.Tensor, tokens: torch.Tensor, padding: torch.Tensor
    ) -> torch.Tensor:
        """One block; ``padding`` is True where a token must be ignored."""
        query = self.norm_latent(latents)
        keys = self.norm_tokens(tokens)
        attended, _ = self.cross(query, keys, keys, key_padding_mask=padding, need_weights=False)
        latents = self.cross_ff(latents + attended)
        query = self.norm_self(latents)
        mixed, _ = self.self_attention(query, query, query, need_weights=False)
        out: torch.Tensor = self.self_ff(latents + mixed)
        return out


class PerceiverHead(nn.Module):
    """Learned latent queries cross-attend to every token (Perceiver-style fusion).

    Args:
        d_model: Token width.
        n_heads: Attention heads.
        n_latents: Number of latent queries.
        n_layers: Number of cross-attention + self-attention blocks.
        dropout: Attention and MLP dropout.
    """

    def __init__(
        self, d_model: int, n_heads: int, n_latents: int, n_layers: int, dropout: float
    ) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(n_latents, d_model) * 0.02)
        self.blocks = nn.ModuleList(
            CrossAttentionBlock(d_model, n_heads, dropout) for _ in range(n_layers)
        )
        self.out = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, 1))

    def forward(
        self, tokens: torch.Tensor, mask: torch.Tensor, groups: torch.Tensor
    ) -> torch.Tensor:
        """Logits (B,)."""
        latents = self.latents.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        for block in self.blocks:
            latents = block(latents, tokens, ~mask)
        logits: torch.Tensor = self.out(latents.mean(dim=1)).squeeze(-1)
        return logits


class EarlyHead(nn.Module):
    """Early (feature-level) fusion: pooled modality embeddings concatenated, one MLP."""

    def __init__(self, d_model: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(N_GROUPS * d_model),
            nn.Linear(N_GROUPS * d_model, d_model),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(d_model, 1),
        )

    def forward(
        self, tokens: torch.Tensor, mask: torch.Tensor, groups: torch.Tensor
    ) -> torch.Tensor:
        """Logits (B,)."""
        pooled = pool_groups(tokens, mask, groups).flatten(1)
        logits: torch.Tensor = self.net(pooled).squeeze(-1)
        return logits


class LateHead(nn.Module):
    """Late fusion: one small classifier per modality, logits summed."""

    def __init__(self, d_model: int, dropout: float) -> None:
        super().__init__()
        self.heads = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(d_model),
                nn.Linear(d_model, d_model),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(d_model, 1),
            )
            for _ in range(N_GROUPS)
        )

    def forward(
        self, tokens: torch.Tensor, mask: torch.Tensor, groups: torch.Tensor
    ) -> torch.Tensor:
        """Logits (B,)."""
        pooled = pool_groups(tokens, mask, groups)
        logits = [head(pooled[:, g]).squeeze(-1) for g, head in enumerate(self.heads)]
        return torch.stack(logits, dim=1).sum(dim=1)


class AttentionWeightedHead(nn.Module):
    """Attention-weighted fusion: a softmax gate over pooled modality embeddings."""

    def __init__(self, d_model: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.gate = nn.Linear(d_model, 1)
        self.net = nn.Sequential(
            nn.Linear(d_model, d_model), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_model, 1)
        )

    def forward(
        self, tokens: torch.Tensor, mask: torch.Tensor, groups: torch.Tensor
    ) -> torch.Tensor:
        """Logits (B,)."""
        pooled = self.norm(pool_groups(tokens, mask, groups))
        weights = torch.softmax(self.gate(pooled), dim=1)
        logits: torch.Tensor = self.net((weights * pooled).sum(dim=1)).squeeze(-1)
        return logits

"""Per-modality token encoders: image patches, note tokens, observations, demographics.

Every encoder maps its modality to tokens of width ``d_model``; the network adds the
modality-type embedding and hands all tokens to the fusion head.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from fusion.config import ImageConfig, TextConfig


class TimeEncoding(nn.Module):
    """Continuous-time encoding of irregular sampling times.

    Sines and cosines of the time at periods from 1 h to 256 h (geometric), plus
    ``sign(t) log1p(|t|)``, projected to ``d_model``.

    Args:
        d_model: Output width.
        n_frequencies: Number of periods. Defaults to 8.
    """

    angular: torch.Tensor

    def __init__(self, d_model: int, n_frequencies: int = 8) -> None:
        super().__init__()
        periods = torch.logspace(0.0, math.log10(256.0), n_frequencies)
        self.register_buffer("angular", 2.0 * math.pi / periods, persistent=False)
        self.proj = nn.Linear(2 * n_frequencies + 1, d_model)

    def forward(self, hours: torch.Tensor) -> torch.Tensor:
        """Encode times (hours relative to the anchor), shape (...,) -> (..., d_model)."""
        phase = hours.unsqueeze(-1) * self.angular
        log_time = torch.sign(hours) * torch.log1p(hours.abs())
        features = torch.cat([phase.sin(), phase.cos(), log_time.unsqueeze(-1)], dim=-1)
        out: torch.Tensor = self.proj(features)
        return out


class SmallCNN(nn.Module):
    """A plain convolutional stack: ``num_stages`` stages that halve the side each.

    Each stage is conv 3x3 (stride 2) + BatchNorm + GELU, then conv 3x3 + BatchNorm +
    GELU. Widths double per stage up to ``width`` at the last one. Small radiographs are
    learned from a few thousand examples far better by this than by a from-scratch ViT.

    Args:
        width: Channels of the last stage.
        num_stages: Number of stages; the token grid is ``image_size / 2**num_stages``.
    """

    def __init__(self, width: int, num_stages: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for i in range(num_stages):
            out = max(8, width // 2 ** (num_stages - 1 - i))
            layers += [
                nn.Conv2d(channels, out, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.GELU(),
                nn.Conv2d(out, out, 3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.GELU(),
            ]
            channels = out
        self.net = nn.Sequential(*layers)
        self.width = channels

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 1, S, S) -> (N, width, S / 2**num_stages, S / 2**num_stages)."""
        out: torch.Tensor = self.net(pixels)
        return out


class ImageEncoder(nn.Module):
    """Patch tokens from a small CNN, or a transformers ViT or ConvNeXt.

    Transformers weights come from ``config.pretrained_dir`` (local files only) when set,
    otherwise the encoder is initialised randomly and trained from scratch. The ``cnn``
    kind is always trained from scratch (:class:`SmallCNN`).

    Args:
        config: Image encoder settings.
        d_model: Output token width.
    """

    def __init__(self, config: ImageConfig, d_model: int) -> None:
        super().__init__()
        from transformers import (
            ConvNextConfig,
            ConvNextModel,
            ViTConfig,
            ViTModel,
        )

        self.kind = config.kind
        backbone: Any
        if config.kind == "cnn":
            backbone = SmallCNN(config.hidden_size, max(1, config.num_layers))
            width = backbone.width
            self.channels = 1
        elif config.kind == "vit":
            if config.pretrained_dir:
                backbone = ViTModel.from_pretrained(
                    config.pretrained_dir, local_files_only=True, add_pooling_layer=False
                )
            else:
                backbone = ViTModel(
                    ViTConfig(
                        image_size=config.image_size,
                        patch_size=config.patch_size,
                        num_channels=1,
                        hidden_size=config.hidden_size,
                        num_hidden_layers=config.num_layers,
                        num_attention_heads=config.num_heads,
                        intermediate_size=2 * config.hidden_size,
                        hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0,
                    ),
                    add_pooling_layer=False,
                )
            width = int(backbone.config.hidden_size)
        else:
            if config.pretrained_dir:
                backbone = ConvNextModel.from_pretrained(
                    config.pretrained_dir, local_files_only=True
                )
            else:
                stages = max(1, config.num_layers)
                sizes = [max(8, config.hidden_size // 2 ** (stages - 1 - i)) for i in range(stages)]
                backbone = ConvNextModel(
                    ConvNextConfig(
                        num_channels=1,
                        hidden_sizes=sizes,
                        depths=[1] * stages,
                        num_stages=stages,
                        image_size=config.image_size,
                        patch_size=config.patch_size // 2 or 1,
                    )
                )
            width = int(backbone.config.hidden_sizes[-1])
        self.backbone = backbone
        if config.kind != "cnn":
            self.channels = int(backbone.config.num_channels)
        self.proj = nn.Linear(width, d_model)
        backbone.eval()  # the shape probe must not touch BatchNorm running statistics
        with torch.no_grad():
            n_tokens = self._raw(torch.zeros(1, 1, config.image_size, config.image_size)).shape[1]
        backbone.train()
        self.position = nn.Parameter(torch.zeros(1, n_tokens, d_model))
        self.n_tokens = n_tokens

    def _raw(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.kind == "cnn":
            grid: torch.Tensor = self.backbone(pixels)
            return grid.flatten(2).transpose(1, 2)
        pixels = pixels.expand(-1, self.channels, -1, -1)
        hidden: torch.Tensor = self.backbone(pixel_values=pixels).last_hidden_state
        if self.kind == "vit":
            tokens: torch.Tensor = hidden[:, 1:]
            return tokens
        return hidden.flatten(2).transpose(1, 2)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 1, S, S) images -> (N, P, d_model) patch tokens."""
        out: torch.Tensor = self.proj(self._raw(pixels)) + self.position
        return out


class NoteEncoder(nn.Module):
    """Note tokens from a BERT-style encoder (local pretrained directory or from scratch).

    Args:
        config: Text settings.
        vocab_size: Vocabulary size of the from-scratch model.
        d_model: Output token width.
    """

    def __init__(self, config: TextConfig, vocab_size: int, d_model: int) -> None:
        super().__init__()
        from transformers import AutoModel, BertConfig, BertModel

        encoder: Any
        if config.pretrained_dir:
            encoder = AutoModel.from_pretrained(config.pretrained_dir, local_files_only=True)
            width = int(encoder.config.hidden_size)
        else:
            encoder = BertModel(
                BertConfig(
                    vocab_size=vocab_size,
                    hidden_size=config.hidden_size,
                    num_hidden_layers=config.num_layers,
                    num_attention_heads=config.num_heads,
                    intermediate_size=2 * config.hidden_size,
                    max_position_embeddings=max(config.max_tokens, 8),
                    hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0,
                ),
                add_pooling_layer=False,
            )
            width = config.hidden_size
        self.encoder = encoder
        self.proj = nn.Linear(width, d_model)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Word embeddings (N, L, width) of token ids: the input of saliency maps."""
        embedding = self.encoder.get_input_embeddings()
        out: torch.Tensor = embedding(ids)
        return out

    def forward(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Word embeddings (N, L, width) and mask (N, L) -> tokens (N, L, d_model)."""
        hidden = self.encoder(inputs_embeds=embeds, attention_mask=mask.long()).last_hidden_state
        out: torch.Tensor = self.proj(hidden)
        return out


class FeedForward(nn.Module):
    """Pre-norm residual MLP block (width x2, GELU)."""

    def __init__(self, d_model: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(d_model),
            nn.Linear(d_model, 2 * d_model),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(2 * d_model, d_model),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x + MLP(LayerNorm(x))."""
        out: torch.Tensor = x + self.net(x)
        return out


class ObservationEncoder(nn.Module):
    """One token per lab or vital observation: code + value + continuous time.

    The value enters through a code-specific direction (``value * w[code]``), so the same
    normalised value means different things for different codes.

    Args:
        n_codes: Size of the code table (pad and unknown included).
        d_model: Token width.
    """

    def __init__(self, n_codes: int, d_model: int) -> None:
        super().__init__()
        self.code = nn.Embedding(n_codes, d_model, padding_idx=0)
        self.value_direction = nn.Embedding(n_codes, d_model)
        self.time = TimeEncoding(d_model)
        self.mix = FeedForward(d_model)

    def embed(self, codes: torch.Tensor, values: torch.Tensor, hours: torch.Tensor) -> torch.Tensor:
        """(B, L) codes, normalised values and times -> (B, L, d_model) tokens."""
        token = self.code(codes) + values.unsqueeze(-1) * self.value_direction(codes)
        out: torch.Tensor = self.mix(token + self.time(hours))
        return out


class DemographicsEncoder(nn.Module):
    """Two tokens: age (a learned direction scaled by standardised age) and sex."""

    def __init__(self, d_model: int, n_sex_codes: int = 4) -> None:
        super().__init__()
        self.age_base = nn.Parameter(torch.zeros(d_model))
        self.age_direction = nn.Parameter(torch.randn(d_model) * 0.1)
        self.age_unknown = nn.Parameter(torch.zeros(d_model))
        self.sex = nn.Embedding(n_sex_codes, d_model)

    def forward(
        self, age_z: torch.Tensor, age_known: torch.Tensor, sex: torch.Tensor
    ) -> torch.Tensor:
        """(B,) standardised age, age-known flag and sex index -> (B, 2, d_model)."""
        age = self.age_base + age_z.unsqueeze(-1) * self.age_direction
        age = torch.where(age_known.unsqueeze(-1), age, self.age_unknown.expand_as(age))
        return torch.stack([age, self.sex(sex)], dim=1)

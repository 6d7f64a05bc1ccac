"""The fusion network: modality tokens + type embeddings + missing tokens -> one logit."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fusion.batch import Batch
from fusion.config import FusionConfig
from fusion.inputs import MODALITIES
from fusion.model.encoders import (
    DemographicsEncoder,
    ImageEncoder,
    NoteEncoder,
    ObservationEncoder,
    TimeEncoding,
)
from fusion.model.heads import (
    N_GROUPS,
    AttentionWeightedHead,
    EarlyHead,
    LateHead,
    PerceiverHead,
    pool_groups,
)

GROUP_IMAGE, GROUP_NOTES, GROUP_LABS, GROUP_VITALS, GROUP_DEMOGRAPHICS = range(N_GROUPS)


@dataclass(frozen=True)
class ShapeBuckets:
    """Fixed input shapes for the image and note encoders, for compiled inference.

    The encoders run only on the bundles that have their modality, so without buckets
    a compiled encoder sees as many row counts (and note lengths) as batches have, and
    recompiles for each until torch gives up and runs it eagerly. With buckets, the rows
    (and the note length) are padded up to the next bucket: padded image rows are zeros,
    padded note rows attend to one padding token, and their outputs are dropped. Each
    encoder then only ever sees ``len(rows)`` (images) or ``len(rows) * len(note_lengths)``
    (notes) shapes, all compiled at warm-up (:meth:`FusionModel.warm_up_buckets`).

    Attributes:
        rows: Row counts, ascending; a batch never has more rows than the last.
        note_lengths: Note token lengths, ascending; the last is the longest note input.
    """

    rows: tuple[int, ...]
    note_lengths: tuple[int, ...]

    @classmethod
    def for_model(cls, config: FusionConfig, batch_size: int) -> ShapeBuckets:
        """Powers of 4 up to ``batch_size`` (padding waste under 4x, under 2x for full
        batches) and a quarter, half and all of ``config.text.max_tokens``.
        """
        rows = {batch_size}
        size = 1
        while size < batch_size:
            rows.add(size)
            size *= 4
        longest = config.text.max_tokens
        lengths = {longest} | {longest // k for k in (2, 4) if longest // k >= 8}
        return cls(tuple(sorted(rows)), tuple(sorted(lengths)))

    @staticmethod
    def fit(n: int, sizes: tuple[int, ...]) -> int:
        """The smallest size >= n (n itself when it exceeds every size)."""
        return next((s for s in sizes if s >= n), n)

    @property
    def shapes(self) -> int:
        """Distinct encoder input shapes: what the recompile limit must allow."""
        return len(self.rows) * (1 + len(self.note_lengths))


@dataclass
class Captured:
    """Inputs of the attribution maps, kept when ``FusionModel.forward(capture=True)``.

    Attributes:
        note_embeds: (B, Ln, width) word embeddings (with ``retain_grad``), or None.
        obs_tokens: (B, Lo, d_model) observation tokens (with ``retain_grad``).
        demo_tokens: (B, 2, d_model) demographics tokens (with ``retain_grad``).
    """

    note_embeds: torch.Tensor | None
    obs_tokens: torch.Tensor
    demo_tokens: torch.Tensor


@dataclass
class Encoded:
    """The data tokens of a batch, before missing tokens are added.

    Every encoder is per modality and per bundle (no attention across modalities), so a
    view that hides some modalities is these tokens with the hidden ones masked out.

    Attributes:
        tokens: (B, L, d_model) tokens with their modality-type embeddings.
        mask: (B, L) True for real tokens.
        groups: (B, L) modality group of each token.
        present: (B, N_GROUPS) bool, which groups each bundle has.
        captured: Attribution inputs, when asked for.
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    groups: torch.Tensor
    present: torch.Tensor
    captured: Captured | None


@dataclass
class TrainingOutputs:
    """What one training forward pass returns (see :meth:`FusionModel.forward_training`).

    Attributes:
        logits: (B,) logits of the training view (modalities in ``hidden`` masked).
        present: (B, 4) bool, the modalities each bundle has before hiding, in
            MODALITIES order.
        auxiliary: (B, 4) auxiliary logit of every modality, read from all the
            bundle's modalities before hiding; None without auxiliary heads.
        single: (B, 4) logit of the single-modality view of each modality (only that
            modality and the demographics); meaningful where ``present``; None unless
            asked for.
    """

    logits: torch.Tensor
    present: torch.Tensor
    auxiliary: torch.Tensor | None
    single: torch.Tensor | None


class FusionModel(nn.Module):
    """Token-level multimodal fusion, honest under missing data.

    Each modality becomes tokens (image patches, note word pieces, one token per
    observation, two demographics tokens); each token gets its modality-type embedding.
    A modality that is absent contributes one learned missing token instead, so the fusion
    attention always has something to attend to. The fusion head is chosen by
    ``config.fusion``.

    Args:
        config: Architecture.
        n_codes: Size of the observation code table (from the Featurizer).
        vocab_size: Note vocabulary size (from the Featurizer).
    """

    def __init__(self, config: FusionConfig, n_codes: int, vocab_size: int) -> None:
        super().__init__()
        d = config.d_model
        self.config = config
        self.image = ImageEncoder(config.image, d)
        self.notes = NoteEncoder(config.text, vocab_size, d)
        self.note_time = TimeEncoding(d)
        self.observations = ObservationEncoder(n_codes, d)
        self.demographics = DemographicsEncoder(d)
        self.modality_type = nn.Embedding(N_GROUPS, d)
        self.missing = nn.Parameter(torch.randn(N_GROUPS, d) * 0.02)
        self.head: nn.Module
        if config.fusion == "cross_attention":
            self.head = PerceiverHead(
                d, config.num_heads, config.num_latents, config.num_fusion_layers, config.dropout
            )
        elif config.fusion == "early":
            self.head = EarlyHead(d, config.dropout)
        elif config.fusion == "late":
            self.head = LateHead(d, config.dropout)
        else:
            self.head = AttentionWeightedHead(d, config.dropout)
        self.auxiliary: nn.ModuleList | None = None
        if config.train.auxiliary_weight > 0:
            self.auxiliary = nn.ModuleList(
                nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 1)) for _ in MODALITIES
            )
        #: Padded encoder shapes for compiled inference; None runs the exact shapes.
        self.shape_buckets: ShapeBuckets | None = None
        #: Parameters started from single-modality teachers (training only).
        self.from_teachers: frozenset[str] = frozenset()

    def train(self, mode: bool = True) -> FusionModel:
        """Training mode, except for a part whose parameters are all frozen (an encoder
        copied from its teacher with ``teacher_encoder_lr_scale`` 0): it stays in eval
        mode, so its BatchNorm statistics do not move and it computes what it computed
        in its teacher."""
        super().train(mode)
        if mode:
            for child in self.children():
                params = list(child.parameters())
                if params and not any(p.requires_grad for p in params):
                    child.eval()
        return self

    def restrict(self, batch: Batch) -> Batch:
        """The batch with every modality outside ``config.modalities`` hidden."""
        if set(self.config.modalities) == set(MODALITIES):
            return batch
        return batch.keep_only(self.config.modalities)

    def forward(
        self, batch: Batch, *, capture: bool = False
    ) -> tuple[torch.Tensor, Captured | None]:
        """Logits for a batch.

        Args:
            batch: Padded inputs (see :class:`fusion.batch.Batch`). Set
                ``batch.image.requires_grad_()`` before the call for an image heatmap.
            capture: Keep the attribution inputs (see :class:`Captured`).

        Returns:
            (logits (B,), captured or None).
        """
        encoded = self._encode(batch, capture)
        return self._fuse(encoded, encoded.mask, encoded.present), encoded.captured

    def forward_with_auxiliary(
        self, batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits plus one auxiliary logit per modality, for training.

        Each auxiliary head reads the mean of its modality's tokens before fusion, so its
        loss trains every encoder to be predictive on its own (as in a single-modality
        model), which the fused model needs when only that modality arrives.

        Returns:
            (logits (B,), auxiliary logits (B, 4) in MODALITIES order, presence (B, 4)
            bool: where an auxiliary logit is meaningful).

        Raises:
            ValueError: When the model has no auxiliary heads
                (``config.train.auxiliary_weight`` is 0).
        """
        if self.auxiliary is None:
            raise ValueError("this model has no auxiliary heads (auxiliary_weight is 0)")
        out = self.forward_training(batch)
        assert out.auxiliary is not None
        return out.logits, out.auxiliary, out.present

    def forward_training(
        self, batch: Batch, hidden: torch.Tensor | None = None, *, single_views: bool = False
    ) -> TrainingOutputs:
        """One encoder pass, then the training view and optionally single-modality views.

        The encoders run on every modality the bundles have; ``hidden`` then masks
        modalities out of the fused view only (modality dropout). So the auxiliary heads,
        when built, train each encoder on every bundle that has its modality, whatever
        the dropout hid; and each single-modality view (that modality plus the
        demographics, the input of a single-modality model) costs one more pass of the
        fusion head, not of the encoders.

        Args:
            batch: Padded inputs.
            hidden: (B, 4) bool in MODALITIES order, True = hide from the fused view.
                None hides nothing.
            single_views: Also return the logit of every single-modality view.

        Returns:
            The :class:`TrainingOutputs`.
        """
        encoded = self._encode(batch, capture=False)
        n_mod = len(MODALITIES)
        present = encoded.present[:, :n_mod]
        hide = torch.zeros_like(encoded.present)
        if hidden is not None:
            hide[:, :n_mod] = hidden.to(hide.device)
        logits = self._view(encoded, hide)
        auxiliary = None
        if self.auxiliary is not None:
            pooled = pool_groups(encoded.tokens, encoded.mask, encoded.groups)
            auxiliary = torch.cat(
                [head(pooled[:, g]) for g, head in enumerate(self.auxiliary)], dim=1
            )
        single = None
        if single_views:
            single = logits.new_zeros((batch.size, n_mod))
            for m in range(n_mod):
                rows = present[:, m].nonzero().squeeze(1)
                if len(rows) == 0:
                    continue
                only = torch.ones_like(hide[rows])
                only[:, m] = False
                only[:, GROUP_DEMOGRAPHICS] = False
                single[rows, m] = self._view(_select(encoded, rows), only)
        return TrainingOutputs(logits, present, auxiliary, single)

    def encode(self, batch: Batch) -> Encoded:
        """The data tokens of a batch, to score several views with :meth:`view`."""
        return self._encode(batch, capture=False)

    def view(self, encoded: Encoded, keep: torch.Tensor) -> torch.Tensor:
        """Logits of the view of an encoding that keeps only some modalities.

        Equal to ``forward(batch.keep_only(...))`` for the same bundles, without running
        the encoders again.

        Args:
            encoded: From :meth:`encode`.
            keep: (4,) or (B, 4) bool in MODALITIES order, True = keep; the demographics
                are always kept.

        Returns:
            (B,) logits.
        """
        n = encoded.present.shape[0]
        hide = torch.zeros_like(encoded.present)
        hide[:, : len(MODALITIES)] = ~keep.to(hide.device).expand(n, len(MODALITIES))
        return self._view(encoded, hide)

    def select(self, encoded: Encoded, rows: torch.Tensor) -> Encoded:
        """The bundles ``rows`` of an encoding (without captured tensors)."""
        return _select(encoded, rows)

    def _view(self, encoded: Encoded, hide: torch.Tensor) -> torch.Tensor:
        """Fused logits with the groups flagged in ``hide`` (B, N_GROUPS) masked out.

        Token positions that no bundle of the view can see are dropped first: the heads
        ignore masked tokens, so this changes nothing but the cost.
        """
        visible = encoded.mask & ~hide.gather(1, encoded.groups)
        columns = visible.any(dim=0).nonzero().squeeze(1)
        trimmed = Encoded(
            encoded.tokens[:, columns],
            visible[:, columns],
            encoded.groups[:, columns],
            encoded.present,
            None,
        )
        return self._fuse(trimmed, trimmed.mask, encoded.present & ~hide)

    def _fuse(self, encoded: Encoded, mask: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Head logits of the visible tokens plus a missing token per absent group."""
        n = present.shape[0]
        all_groups = torch.arange(N_GROUPS, device=present.device).expand(n, N_GROUPS)
        missing = self.missing.unsqueeze(0).expand(n, -1, -1) + self.modality_type(all_groups)
        tokens = torch.cat([encoded.tokens, missing], dim=1)
        mask = torch.cat([mask, ~present], dim=1)
        groups = torch.cat([encoded.groups, all_groups], dim=1)
        logits: torch.Tensor = self.head(tokens, mask, groups)
        return logits

    def _encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Image tokens of (k, 1, S, S) pixels, rows padded to a bucket when set."""
        k = pixels.shape[0]
        rows = k if self.shape_buckets is None else ShapeBuckets.fit(k, self.shape_buckets.rows)
        if rows != k:
            pixels = torch.cat([pixels, pixels.new_zeros((rows - k, *pixels.shape[1:]))])
        out: torch.Tensor = self.image(pixels)
        return out[:k]

    def _encode_notes(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Note tokens of (k, L, width) embeddings, padded to a row and length bucket."""
        buckets = self.shape_buckets
        if buckets is None:
            out: torch.Tensor = self.notes(embeds, mask)
            return out
        k, length, width = embeds.shape
        rows = ShapeBuckets.fit(k, buckets.rows)
        columns = ShapeBuckets.fit(length, buckets.note_lengths)
        if (rows, columns) == (k, length):
            out = self.notes(embeds, mask)
            return out
        padded = embeds.new_zeros((rows, columns, width))
        padded[:k, :length] = embeds
        padded_mask = mask.new_zeros((rows, columns))
        padded_mask[:k, :length] = mask
        padded_mask[k:, 0] = True  # a padding row attends to one token, never to none
        out = self.notes(padded, padded_mask)
        return out[:k, :length]

    def warm_up_buckets(self, *, grad: bool) -> int:
        """Run each encoder once on every bucket shape, as inference would call it.

        Call under the autocast inference uses, in eval mode; ``grad`` as inference runs
        (attributions need gradients, and compiled graphs are specialised on grad mode).

        Returns:
            The number of encoder calls made (0 without buckets).
        """
        buckets = self.shape_buckets
        if buckets is None:
            return 0
        parameter = next(self.parameters())
        size = self.config.image.image_size
        calls = 0
        with torch.set_grad_enabled(grad):
            for rows in buckets.rows:
                pixels = parameter.new_zeros((rows, 1, size, size), dtype=torch.float32)
                out = self._encode_images(pixels.requires_grad_(grad))
                for length in buckets.note_lengths:
                    ids = torch.zeros((rows, length), dtype=torch.long, device=parameter.device)
                    mask = torch.ones((rows, length), dtype=torch.bool, device=parameter.device)
                    out = out.sum() + self._encode_notes(self.notes.embed(ids), mask).sum()
                    calls += 1
                if grad:
                    out.float().sum().backward()  # type: ignore[no-untyped-call]
                calls += 1
        self.zero_grad(set_to_none=True)
        return calls

    def _encode(self, batch: Batch, capture: bool) -> Encoded:
        """The data tokens of a batch (modalities outside ``config.modalities`` hidden)."""
        batch = self.restrict(batch)
        n, d = batch.size, self.config.d_model
        parts: list[torch.Tensor] = []
        masks: list[torch.Tensor] = []
        groups: list[torch.Tensor] = []

        def add(tokens: torch.Tensor, mask: torch.Tensor, group: torch.Tensor | int) -> None:
            if isinstance(group, int):
                group = torch.full(mask.shape, group, dtype=torch.long, device=mask.device)
            parts.append(tokens + self.modality_type(group))
            masks.append(mask)
            groups.append(group)

        image_rows = batch.image_present.nonzero().squeeze(1)
        if len(image_rows):
            encoded = self._encode_images(batch.image[image_rows])
            image_tokens = encoded.new_zeros((n, encoded.shape[1], d))
            image_tokens[image_rows] = encoded
            image_mask = batch.image_present.unsqueeze(1).expand(n, encoded.shape[1])
            add(image_tokens, image_mask, GROUP_IMAGE)

        presence = batch.presence()
        note_embeds = None
        note_rows = presence[:, 1].nonzero().squeeze(1)
        if len(note_rows):
            note_embeds = self.notes.embed(batch.note_ids)
            if capture:
                note_embeds.retain_grad()
            encoded = self._encode_notes(note_embeds[note_rows], batch.note_mask[note_rows])
            note_tokens = encoded.new_zeros((n, encoded.shape[1], d))
            note_tokens[note_rows] = encoded
            note_tokens = note_tokens + self.note_time(batch.note_times)
            add(note_tokens, batch.note_mask, GROUP_NOTES)

        obs_tokens = self.observations.embed(batch.obs_codes, batch.obs_values, batch.obs_times)
        demo_tokens = self.demographics(batch.age_z, batch.age_known, batch.sex)
        if capture:
            obs_tokens.retain_grad()
            demo_tokens.retain_grad()
        add(obs_tokens, batch.obs_mask, GROUP_LABS + batch.obs_category)
        demo_mask = batch.demographics_present.unsqueeze(1).expand(n, 2)
        add(demo_tokens, demo_mask, GROUP_DEMOGRAPHICS)

        present = torch.cat([presence, batch.demographics_present.unsqueeze(1)], dim=1)
        captured = Captured(note_embeds, obs_tokens, demo_tokens) if capture else None
        return Encoded(
            torch.cat(parts, dim=1),
            torch.cat(masks, dim=1),
            torch.cat(groups, dim=1),
            present,
            captured,
        )


def _select(encoded: Encoded, rows: torch.Tensor) -> Encoded:
    """The bundles ``rows`` of an encoding (without captured tensors)."""
    return Encoded(
        encoded.tokens[rows],
        encoded.mask[rows],
        encoded.groups[rows],
        encoded.present[rows],
        None,
    )

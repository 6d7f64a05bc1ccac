"""Model and training configuration, with the ``tiny``, ``demo`` and ``production`` presets.

A :class:`FusionConfig` is plain data: it is stored in every checkpoint (as JSON) and
rebuilt from there, so a checkpoint always carries the architecture it was trained with.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from fusion.errors import ConfigError
from fusion.inputs import MODALITIES

FUSION_KINDS: tuple[str, ...] = ("cross_attention", "early", "late", "attention_weighted")
"""``cross_attention``: Perceiver-style latents attend to every token of every modality.
``early``: per-modality pooled embeddings concatenated before one shared head.
``late``: one head per modality, logits summed.
``attention_weighted``: a softmax gate weights the pooled modality embeddings."""

IMAGE_KINDS: tuple[str, ...] = ("cnn", "vit", "convnext")


@dataclass
class ImageConfig:
    """The vision encoder: a small CNN, or a transformers ViT or ConvNeXt configuration.

    Attributes:
        kind: ``cnn`` (:class:`fusion.model.encoders.SmallCNN`, from scratch), ``vit`` or
            ``convnext``. Defaults to ``vit``.
        image_size: Side of the square model input, pixels. Defaults to 32.
        patch_size: ViT patch side, pixels. Defaults to 8.
        hidden_size: Encoder width (ViT hidden size; last CNN or ConvNeXt stage width).
        num_layers: ViT layers, or CNN or ConvNeXt stages. Defaults to 2.
        num_heads: ViT attention heads. Defaults to 2.
        pretrained_dir: A local directory with transformers weights to start from;
            None trains from scratch. Nothing is fetched from a hub.
    """

    kind: str = "vit"
    image_size: int = 32
    patch_size: int = 8
    hidden_size: int = 48
    num_layers: int = 2
    num_heads: int = 2
    pretrained_dir: str | None = None


@dataclass
class TextConfig:
    """The note encoder.

    Attributes:
        pretrained_dir: A local Hugging Face directory (model and tokenizer, e.g. a clinical
            BERT); None builds a small BERT from scratch with the generated word vocabulary
            of :mod:`fusion.text`. Loaded with ``local_files_only=True``.
        hidden_size: Width of the from-scratch BERT. Defaults to 48.
        num_layers: Layers of the from-scratch BERT. Defaults to 2.
        num_heads: Attention heads of the from-scratch BERT. Defaults to 2.
        max_tokens: Note tokens kept per patient, most recent notes first. Defaults to 48.
    """

    pretrained_dir: str | None = None
    hidden_size: int = 48
    num_layers: int = 2
    num_heads: int = 2
    max_tokens: int = 48


@dataclass
class TrainConfig:
    """Optimisation settings.

    Attributes:
        epochs: Passes over the training split. Defaults to 8.
        batch_size: Patients per step. Defaults to 64.
        learning_rate: AdamW learning rate. Defaults to 2e-3.
        weight_decay: AdamW weight decay. Defaults to 0.01.
        modality_dropout: Probability of hiding each present modality of a training
            patient, so the model learns every missingness pattern. Defaults to 0.3.
        single_modality_rate: Probability that a training patient keeps only one of its
            present modalities (chosen uniformly), so the fused model stays as good as a
            single-modality model when only one modality arrives. Defaults to 0.0.
        auxiliary_weight: Weight of the loss of per-modality auxiliary heads (one logit
            from each modality's pooled tokens, training each encoder to stand alone,
            on every patient that has the modality, before modality dropout); 0 builds
            no auxiliary heads. Defaults to 0.0.
        auxiliary_modality_weights: Per-modality factors on ``auxiliary_weight`` (a
            modality not named keeps 1), for an encoder that needs more pressure to
            stand alone than the others. Defaults to none.
        single_view_weight: Weight of the loss of the single-modality views: every
            training patient is also scored on each of its present modalities alone
            (plus demographics), from the same encoder pass, and each modality's view
            loss (mean over the patients that have it) counts like the whole loss of a
            single-modality model; 0 disables them. Defaults to 0.0.
        distill_weight: Share of the single-modality teachers in the targets of the
            single-modality views (uni-modal teacher distillation, after Du et al.,
            "Improving Multi-Modal Learning with Uni-Modal Teachers", 2021): the view of
            modality m learns ``(1 - w) * label + w * teacher_m`` with ``teacher_m`` the
            probability given by the single-modality model of m, trained first on the
            same split. Needs ``single_view_weight`` > 0; 0 (no teachers) by default.
        teacher_init: Start the image and note encoders from those of the image and notes
            teachers (their best epoch), trained on at ``teacher_encoder_lr_scale`` times
            the learning rate: the pathways that overfit first start where their own
            models stopped. The teachers are trained first, as for ``distill_weight``.
            Defaults to False.
        teacher_encoder_lr_scale: Learning-rate factor of the encoders started from the
            teachers; 0 freezes them. Defaults to 0.1.
        ema_decay: Exponential moving average of the weights (validated, kept and
            saved instead of the raw weights); 0 disables it. Defaults to 0.0.
        seed: Seed for data order, dropout and initialisation. Defaults to 0.
    """

    epochs: int = 8
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 0.01
    modality_dropout: float = 0.3
    single_modality_rate: float = 0.0
    auxiliary_weight: float = 0.0
    auxiliary_modality_weights: dict[str, float] = field(default_factory=dict)
    single_view_weight: float = 0.0
    distill_weight: float = 0.0
    teacher_init: bool = False
    teacher_encoder_lr_scale: float = 0.1
    ema_decay: float = 0.0
    seed: int = 0

    @property
    def uses_teachers(self) -> bool:
        """Whether single-modality teachers are trained first (distillation or init)."""
        return self.distill_weight > 0 or self.teacher_init


@dataclass
class FusionConfig:
    """The whole model.

    Attributes:
        name: Model name recorded in checkpoints and predictions.
        fusion: One of :data:`FUSION_KINDS`. Defaults to ``cross_attention``.
        modalities: Modalities the model may use; the others are always treated as
            missing (single-modality ablations). Defaults to all four.
        d_model: Width of the shared token space. Defaults to 64.
        num_heads: Heads of the fusion attention. Defaults to 4.
        num_latents: Perceiver latents. Defaults to 8.
        num_fusion_layers: Cross-attention + latent self-attention blocks. Defaults to 2.
        dropout: Dropout inside the fusion blocks. Defaults to 0.1.
        max_obs_tokens: Observation tokens kept per patient, most recent first.
        required_modalities: Modalities without which the predictor reports
            insufficient data (the aligner decides the policy). Defaults to none.
        coverage: Nominal coverage of the conformal interval. Defaults to 0.9.
        min_pattern_count: Calibration patients a missingness pattern needs for its own
            conformal quantile; rarer patterns use the pooled quantile. Defaults to 50.
        image, text, train: Sub-configurations.
    """

    name: str = "cdsfusion-synthetic"
    fusion: str = "cross_attention"
    modalities: tuple[str, ...] = MODALITIES
    d_model: int = 64
    num_heads: int = 4
    num_latents: int = 8
    num_fusion_layers: int = 2
    dropout: float = 0.1
    max_obs_tokens: int = 64
    required_modalities: tuple[str, ...] = ()
    coverage: float = 0.9
    min_pattern_count: int = 50
    image: ImageConfig = field(default_factory=ImageConfig)
    text: TextConfig = field(default_factory=TextConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        self.modalities = tuple(self.modalities)
        self.required_modalities = tuple(self.required_modalities)
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` on an invalid combination of settings."""
        if self.fusion not in FUSION_KINDS:
            raise ConfigError(f"fusion must be one of {FUSION_KINDS}, not {self.fusion!r}")
        unknown = set(self.modalities) | set(self.required_modalities)
        unknown |= set(self.train.auxiliary_modality_weights)
        unknown -= set(MODALITIES)
        if unknown:
            raise ConfigError(f"unknown modalities {sorted(unknown)}; known: {MODALITIES}")
        if self.image.kind not in IMAGE_KINDS:
            raise ConfigError(f"image.kind must be one of {IMAGE_KINDS}, not {self.image.kind!r}")
        if self.d_model % self.num_heads:
            raise ConfigError("d_model must be a multiple of num_heads")
        if not 0.0 < self.coverage < 1.0:
            raise ConfigError("coverage must lie strictly between 0 and 1")
        if not 0.0 <= self.train.distill_weight <= 1.0:
            raise ConfigError("train.distill_weight must lie between 0 and 1")
        if self.train.distill_weight > 0 and self.train.single_view_weight <= 0:
            raise ConfigError("train.distill_weight needs train.single_view_weight > 0")
        if self.train.teacher_encoder_lr_scale < 0:
            raise ConfigError("train.teacher_encoder_lr_scale must not be negative")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FusionConfig:
        """Rebuild a config from :meth:`to_dict` output; unknown keys are an error."""
        data = dict(data)
        try:
            image = ImageConfig(**data.pop("image", {}))
            text = TextConfig(**data.pop("text", {}))
            train = TrainConfig(**data.pop("train", {}))
            return cls(image=image, text=text, train=train, **data)
        except TypeError as exc:
            raise ConfigError(f"invalid fusion config: {exc}") from exc

    def replace(self, **changes: Any) -> FusionConfig:
        """A copy with top-level fields changed (sub-configs are copied too)."""
        return FusionConfig.from_dict({**self.to_dict(), **changes})


def preset(name: str) -> FusionConfig:
    """A named configuration.

    Args:
        name: ``tiny`` (tests: seconds on CPU), ``demo`` (the shipped demo model: a few
            minutes on 2 CPU cores), ``benchmark`` (the demo architecture with the
            training recipe of the evaluation goals: single-modality teachers trained
            first, the fused model's image and note encoders started from them and
            frozen, every single-modality view scored each step against its teacher,
            an average of the weights, 10 epochs; meant for
            ``--patients 12000 --calibration-patients 8000``, under an hour on 2 CPU
            cores per model) or ``production`` (ViT-Base-like image encoder and a
            clinical BERT the operator provides in ``text.pretrained_dir``).

    Returns:
        A fresh FusionConfig.

    Raises:
        ConfigError: For an unknown name.
    """
    if name == "tiny":
        return FusionConfig(
            name="cdsfusion-tiny-synthetic",
            d_model=32,
            num_heads=2,
            num_latents=4,
            num_fusion_layers=1,
            dropout=0.0,
            max_obs_tokens=48,
            image=ImageConfig(image_size=32, patch_size=8, hidden_size=32, num_layers=1),
            text=TextConfig(hidden_size=32, num_layers=1, max_tokens=32),
            train=TrainConfig(epochs=4, batch_size=32, learning_rate=3e-3),
        )
    if name == "demo":
        return FusionConfig(
            name="cdsfusion-demo-synthetic",
            image=ImageConfig(kind="cnn", image_size=64, hidden_size=64, num_layers=3),
            train=TrainConfig(single_modality_rate=0.5, auxiliary_weight=0.5, ema_decay=0.998),
        )
    if name == "benchmark":
        return FusionConfig(
            name="cdsfusion-benchmark-synthetic",
            image=ImageConfig(kind="cnn", image_size=64, hidden_size=64, num_layers=3),
            train=TrainConfig(
                epochs=10,
                single_modality_rate=0.0,
                single_view_weight=1.0,
                auxiliary_weight=0.5,
                distill_weight=1.0,
                teacher_init=True,
                teacher_encoder_lr_scale=0.0,
                ema_decay=0.998,
            ),
        )
    if name == "production":
        return FusionConfig(
            name="cdsfusion",
            d_model=256,
            num_heads=8,
            num_latents=32,
            num_fusion_layers=4,
            max_obs_tokens=256,
            image=ImageConfig(
                image_size=224, patch_size=16, hidden_size=768, num_layers=12, num_heads=12
            ),
            text=TextConfig(hidden_size=768, num_layers=12, num_heads=12, max_tokens=512),
            train=TrainConfig(epochs=20, batch_size=32, learning_rate=3e-4),
        )
    raise ConfigError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")


PRESETS: tuple[str, ...] = ("tiny", "demo", "benchmark", "production")

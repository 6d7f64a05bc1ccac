"""CDS Hooks cards from stored predictions (pure: values in, a ``Card`` out).

The rules (CDS Hooks 2.0 §Card):

* ``summary`` under 140 characters: the task's title (shortened if needed), the
  probability in percent and the qualitative level. A prediction without a number gives
  "Not enough data for <title>: missing <what>" and never a number.
* ``indicator`` from the thresholds: ``critical`` at or above the high threshold,
  ``warning`` at or above the moderate one, else ``info``; cards without a number are
  ``info``.
* ``source``: label names the model and version, ``url`` its model card, ``icon`` the
  engine's icon.
* ``detail`` (GitHub-flavoured markdown): probability, interval and coverage, level and
  thresholds, outcome and horizon, top contributing factors, the data times per modality,
  what was missing, when it was assessed, the synthetic-data warning.
* ``links``: the prediction's review page (``absolute``) and, when configured, the SMART
  app (``smart``, ``appContext`` naming the prediction).
* ``suggestions`` only when configured for the card's indicator, and then
  ``selectionBehavior`` ``at-most-one``; ``overrideReasons`` on every prediction card.
* ``uuid``: the prediction's id for prediction cards (feedback then names the
  prediction); a stable name-based UUID for pending / missing cards.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from cds.core.db.models import PredictionStatus
from cds.fhir.assessment import Assessment
from cds.fhir.factors import has_image_heatmap, top_factors
from cds.fhir.levels import RiskLevel, RiskLevels
from cds.hooks.models import SUMMARY_MAX, Card, Coding, Link, Source, Suggestion

_INDICATOR = {RiskLevel.LOW: "info", RiskLevel.MODERATE: "warning", RiskLevel.HIGH: "critical"}
_CARD_NAMESPACE = uuid.UUID("0b3e2f4c-8d0a-4f57-b6a3-5c1e9d7f2a64")
OVERRIDE_SYSTEM = "urn:cdsfusion:override-reason"
OVERRIDE_REASONS = (
    Coding(system=OVERRIDE_SYSTEM, code="not-relevant", display="Not relevant for this patient"),
    Coding(system=OVERRIDE_SYSTEM, code="already-addressed", display="Already addressed"),
    Coding(system=OVERRIDE_SYSTEM, code="disagree", display="Disagree with the risk estimate"),
    Coding(system=OVERRIDE_SYSTEM, code="data-wrong", display="Input data wrong or outdated"),
)
SYNTHETIC_WARNING = "Model trained on synthetic data only: not for patient care."
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|])")


@dataclass(frozen=True)
class CardSettings:
    """What every card needs besides the prediction.

    Attributes:
        levels: the probability thresholds.
        review_url: prediction id -> absolute URL of its review page.
        model_card_url: (name, version) -> absolute URL of the model card.
        icon_url: absolute URL of the source icon.
        engine_label: the source label when no model is named.
        smart_app_url: the SMART app's launch URL, if configured.
        suggestions: indicator -> suggestions to offer on such cards (configured).
    """

    levels: RiskLevels
    review_url: Callable[[uuid.UUID], str]
    model_card_url: Callable[[str, str], str]
    icon_url: str
    engine_label: str = "cdsfusion"
    smart_app_url: str | None = None
    suggestions: Mapping[str, Sequence[Suggestion]] = field(default_factory=dict)

    def review(self, prediction_id: uuid.UUID) -> str:
        return self.review_url(prediction_id)

    def card_url(self, name: str, version: str) -> str:
        return self.model_card_url(name, version)


def escape_markdown(text: str) -> str:
    """Escape characters that markdown would interpret (data values are shown literally)."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def shorten(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis when it is longer."""
    return text if len(text) <= limit else text[: max(0, limit - 1)].rstrip() + "…"


def percent(value: float) -> str:
    """A probability as a percentage: ``0.3412`` -> ``34%``; below 1 % one decimal."""
    scaled = value * 100
    return f"{scaled:.1f}%" if 0 < scaled < 1 else f"{scaled:.0f}%"


def _time(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def summary_with_title(title: str, tail: str) -> str:
    """``<title>: <tail>`` under :data:`SUMMARY_MAX`, shortening the title first."""
    room = SUMMARY_MAX - 1 - len(tail) - 2
    if room < 10:
        return shorten(tail, SUMMARY_MAX - 1)
    return f"{shorten(title, room)}: {tail}"


def _detail(assessment: Assessment, probability: float, cfg: CardSettings) -> str:
    level = cfg.levels.level(probability)
    lines = [f"**Probability:** {percent(probability)} ({level.value} risk)"]
    if assessment.interval_low is not None and assessment.interval_high is not None:
        coverage = assessment.outputs.get("coverage")
        cover = (
            f", {percent(float(coverage))} coverage" if isinstance(coverage, int | float) else ""
        )
        lines.append(
            f"**Interval:** {percent(assessment.interval_low)} to "
            f"{percent(assessment.interval_high)}{cover}"
        )
    lines.append(
        f"**Levels:** moderate from {percent(cfg.levels.moderate)}, "
        f"high from {percent(cfg.levels.high)}"
    )
    if assessment.task is not None:
        horizon = assessment.task.horizon.total_seconds() / 3600
        lines.append(
            f"**Outcome:** {escape_markdown(assessment.task.outcome.display)} "
            f"(within {horizon:g} h of {_time(assessment.anchor_at)})"
        )
    attributions = assessment.outputs.get("attributions")
    attributions = attributions if isinstance(attributions, dict) else None
    factors = top_factors(attributions, displays=assessment.displays)
    if factors:
        lines += ["", "**Top contributing factors**", ""]
        lines += [f"- {escape_markdown(f.describe())}" for f in factors]
    if has_image_heatmap(attributions):
        lines += ["", "The image heatmap is on the review page."]
    latest = assessment.latest_by_modality()
    if latest:
        lines += ["", "**Data used** (latest time per modality)", ""]
        lines += [f"- {name}: {_time(at)}" for name, at in sorted(latest.items())]
    if assessment.missing:
        lines += ["", f"**Missing:** {', '.join(escape_markdown(m) for m in assessment.missing)}"]
    lines += [
        "",
        f"Assessed {_time(assessment.created_at)} by "
        f"{escape_markdown(assessment.model_name)} {escape_markdown(assessment.model_version)}.",
    ]
    if assessment.model_card is not None and assessment.model_card.synthetic_training_data:
        lines += ["", f"_{SYNTHETIC_WARNING}_"]
    return "\n".join(lines)


def _source(assessment: Assessment | None, cfg: CardSettings) -> Source:
    if assessment is None:
        return Source(label=cfg.engine_label, icon=cfg.icon_url)
    return Source(
        label=f"{cfg.engine_label}: {assessment.model_name} {assessment.model_version}",
        url=cfg.card_url(assessment.model_name, assessment.model_version),
        icon=cfg.icon_url,
    )


def _links(prediction_id: uuid.UUID, cfg: CardSettings) -> list[Link]:
    links = [Link(label="Review this prediction", url=cfg.review(prediction_id), type="absolute")]
    if cfg.smart_app_url:
        links.append(
            Link(
                label="Open in the risk app",
                url=cfg.smart_app_url,
                type="smart",
                appContext=f'{{"predictionId":"{prediction_id}"}}',
            )
        )
    return links


def _suggestions(indicator: str, card_uuid: str, cfg: CardSettings) -> list[Suggestion]:
    configured = cfg.suggestions.get(indicator) or ()
    return [
        s.model_copy(
            update={"uuid": s.uuid or str(uuid.uuid5(_CARD_NAMESPACE, f"{card_uuid}|{s.label}"))}
        )
        for s in configured
    ]


def prediction_card(assessment: Assessment, cfg: CardSettings) -> Card:
    """The card for a stored prediction (with or without a number)."""
    if assessment.status is PredictionStatus.INSUFFICIENT_DATA or assessment.probability is None:
        return not_enough_data_card(assessment, cfg)
    probability = assessment.probability
    level = cfg.levels.level(probability)
    indicator = _INDICATOR[level]
    card_uuid = str(assessment.prediction_id)
    suggestions = _suggestions(indicator, card_uuid, cfg)
    return Card(
        uuid=card_uuid,
        summary=summary_with_title(assessment.title, f"{percent(probability)} ({level.value})"),
        detail=_detail(assessment, probability, cfg),
        indicator=indicator,
        source=_source(assessment, cfg),
        suggestions=suggestions or None,
        selectionBehavior="at-most-one" if suggestions else None,
        overrideReasons=list(OVERRIDE_REASONS),
        links=_links(assessment.prediction_id, cfg),
    )


def not_enough_data_card(assessment: Assessment, cfg: CardSettings) -> Card:
    """ "Not enough data": info, what was missing, no number anywhere."""
    missing = assessment.missing or ["required data"]
    lines = [
        f"No risk was computed for the data around {_time(assessment.anchor_at)}: "
        f"missing {', '.join(escape_markdown(m) for m in missing)}.",
        "",
        "A new assessment is made automatically when the missing data arrives.",
    ]
    latest = assessment.latest_by_modality()
    if latest:
        lines += ["", "**Data available**", ""]
        lines += [f"- {name}: {_time(at)}" for name, at in sorted(latest.items())]
    return Card(
        uuid=str(assessment.prediction_id),
        summary=summary_with_title(
            f"Not enough data for {assessment.title}", f"missing {', '.join(missing)}"
        ),
        detail="\n".join(lines),
        indicator="info",
        source=_source(assessment, cfg),
        links=_links(assessment.prediction_id, cfg),
    )


def pending_card(
    *, title: str, key: str, cfg: CardSettings, anchor_at: dt.datetime | None = None
) -> Card:
    """Data is there and being scored: the card says the assessment is pending."""
    when = f" for the data around {_time(anchor_at)}" if anchor_at else ""
    return Card(
        uuid=str(uuid.uuid5(_CARD_NAMESPACE, f"pending|{key}")),
        summary=summary_with_title(title, "assessment pending"),
        detail=f"The assessment{when} is being computed; open the chart again in a moment.",
        indicator="info",
        source=_source(None, cfg),
    )


def waiting_card(*, title: str, waiting_for: str, key: str, cfg: CardSettings) -> Card:
    """No anchor yet: the card says what the assessment is waiting for."""
    return Card(
        uuid=str(uuid.uuid5(_CARD_NAMESPACE, f"waiting|{key}")),
        summary=summary_with_title(title, f"waiting for {waiting_for}"),
        detail=(
            f"No assessment yet: it is made when {escape_markdown(waiting_for)} has been received."
        ),
        indicator="info",
        source=_source(None, cfg),
    )

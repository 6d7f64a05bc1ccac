"""The top contributing factors of a prediction, read from its stored attributions.

The attributions are gradient x input on the logit (``fusion/README.md``): signed
per-observation contributions, signed note-token saliencies, signed demographics scores
and an unsigned image heatmap. Positive raises the risk.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Tokenizer artefacts that are not words of the note.
_SPECIAL_TOKENS = {"[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]", "<s>", "</s>", "<pad>"}
_MAX_NOTE_TOKENS = 3


@dataclass(frozen=True)
class Factor:
    """One input and how much it moved the logit.

    Attributes:
        label: human-readable, e.g. ``Lactate 4.8 mmol/L`` or ``note: "consolidation"``.
        score: signed contribution to the logit.
        modality: ``labs``, ``vitals``, ``notes`` or ``demographics``.
    """

    label: str
    score: float
    modality: str

    def describe(self) -> str:
        direction = "raises" if self.score > 0 else "lowers"
        return f"{self.label} ({direction} risk, {self.score:+.3f})"


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _observation_factors(items: Any, displays: Mapping[tuple[str, str], str]) -> list[Factor]:
    found: list[Factor] = []
    for item in items if isinstance(items, list) else ():
        if not isinstance(item, dict) or not isinstance(item.get("contribution"), int | float):
            continue
        system, code = str(item.get("code_system") or ""), str(item.get("code") or "")
        name = displays.get((system, code)) or code or "observation"
        value = item.get("value")
        unit = item.get("unit") or ""
        label = f"{name} {_number(value)} {unit}".strip() if value is not None else name
        modality = "vitals" if item.get("category") == "vital-signs" else "labs"
        found.append(Factor(label, float(item["contribution"]), modality))
    return found


def _note_factors(items: Any) -> list[Factor]:
    tokens = [
        Factor(f'note: "{item["token"]}"', float(item["score"]), "notes")
        for item in (items if isinstance(items, list) else ())
        if isinstance(item, dict)
        and isinstance(item.get("token"), str)
        and item["token"] not in _SPECIAL_TOKENS
        and any(ch.isalnum() for ch in item["token"])  # a word or number, not punctuation
        and isinstance(item.get("score"), int | float)
    ]
    tokens.sort(key=lambda f: abs(f.score), reverse=True)
    return tokens[:_MAX_NOTE_TOKENS]


def _demographic_factors(items: Any) -> list[Factor]:
    if not isinstance(items, dict):
        return []
    return [
        Factor(str(name), float(score), "demographics")
        for name, score in items.items()
        if isinstance(score, int | float)
    ]


def top_factors(
    attributions: Mapping[str, Any] | None,
    *,
    displays: Mapping[tuple[str, str], str] | None = None,
    limit: int = 5,
) -> list[Factor]:
    """The ``limit`` inputs with the largest absolute contribution, largest first.

    Args:
        attributions: ``Prediction.outputs["attributions"]`` (``None`` gives no factors).
        displays: (code system, code) -> display name, for observation labels.
        limit: how many factors. Defaults to 5.
    """
    if not attributions:
        return []
    factors = [
        *_observation_factors(attributions.get("observations"), displays or {}),
        *_note_factors(attributions.get("notes")),
        *_demographic_factors(attributions.get("demographics")),
    ]
    factors = [f for f in factors if f.score != 0]
    factors.sort(key=lambda f: abs(f.score), reverse=True)
    return factors[:limit]


def has_image_heatmap(attributions: Mapping[str, Any] | None) -> bool:
    """Whether the attributions include an image heatmap (shown on the review page)."""
    image = (attributions or {}).get("image")
    return isinstance(image, dict) and bool(image.get("heatmap"))

"""Note-token saliency as the reader sees it: tokens with a shade for their score.

``attributions.notes`` is the token sequence the model read, each with a signed score
(gradient x input on the logit; positive raised the risk; ``fusion/README.md``). Word
pieces (``##ing``) are joined to their word, special tokens are dropped, and each word
gets a class ``up-N`` / ``down-N`` (N = 0..4, by the share of the largest magnitude), so
the page needs no inline style.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_SPECIAL = frozenset({"[CLS]", "[SEP]", "[PAD]", "[MASK]", "<s>", "</s>", "<pad>"})
LEVELS = 5


@dataclass(frozen=True)
class TokenView:
    """One word of the note as the model read it."""

    text: str
    score: float
    css: str


def _words(items: Sequence[Any]) -> list[tuple[str, float]]:
    words: list[tuple[str, float]] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        token = str(item.get("token", ""))
        try:
            score = float(item.get("score", 0.0))
        except (TypeError, ValueError):
            continue
        if not token or token in _SPECIAL:
            continue
        if token.startswith("##") and words:
            text, previous = words[-1]
            words[-1] = (text + token[2:], previous if abs(previous) >= abs(score) else score)
        else:
            words.append((token, score))
    return words


def highlight_tokens(items: object) -> list[TokenView]:
    """Words with their score and shade class; empty when there is no note saliency."""
    if not isinstance(items, list):
        return []
    words = _words(items)
    biggest = max((abs(score) for _, score in words), default=0.0)
    views = []
    for text, score in words:
        level = min(LEVELS - 1, int(abs(score) / biggest * LEVELS)) if biggest else 0
        views.append(TokenView(text, score, f"{'up' if score > 0 else 'down'}-{level}"))
    return views

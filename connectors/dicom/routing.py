"""Routing rules: which completed studies matter, and how long to wait for them.

A rule matches a study by its modalities (PS3.3 C.7.3.1 Modality) and body parts
(BodyPartExamined, PS3.16 CID 4031 code meanings such as ``CHEST``); both match
case-insensitively, and an empty list matches anything. The first matching rule wins. A
rule with ``anchor: true`` marks the completed study as the anchor of an analysis; every
rule may set its own quiet period for stable-study detection.

The rules live in a YAML file (``CDSFUSION_DICOM_ROUTING_RULES_FILE``)::

    rules:
      - name: chest-radiograph
        modalities: [CR, DX]
        body_parts: [CHEST]
        anchor: true
        quiet_period_s: 10
      - name: chest-ct
        modalities: [CT]
        body_parts: [CHEST]
        anchor: false

Without a file the engine uses :data:`DEFAULT_RULES` (the chest radiograph above, with the
default quiet period).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cds.core.errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class RoutingRule:
    """One rule.

    Attributes:
        name: shown in the study's anchor event (``details.routing_rule``).
        modalities: Modality values that match (upper case); empty matches any.
        body_parts: BodyPartExamined values that match (upper case); empty matches any.
        anchor: a matching completed study triggers analysis. Defaults to True.
        quiet_period_s: seconds without a new instance before the study is complete;
            ``None`` uses ``CDSFUSION_DICOM_QUIET_PERIOD_S``.
    """

    name: str
    modalities: frozenset[str] = field(default_factory=frozenset)
    body_parts: frozenset[str] = field(default_factory=frozenset)
    anchor: bool = True
    quiet_period_s: float | None = None

    def matches(self, modalities: Iterable[str], body_parts: Iterable[str]) -> bool:
        mods = {m.upper() for m in modalities}
        parts = {p.upper() for p in body_parts}
        return (not self.modalities or bool(self.modalities & mods)) and (
            not self.body_parts or bool(self.body_parts & parts)
        )


DEFAULT_RULES: tuple[RoutingRule, ...] = (
    RoutingRule(
        name="chest-radiograph",
        modalities=frozenset({"CR", "DX"}),
        body_parts=frozenset({"CHEST"}),
        anchor=True,
    ),
)


@dataclass(frozen=True, slots=True)
class RoutingRules:
    """An ordered list of rules; the first that matches wins."""

    rules: tuple[RoutingRule, ...] = DEFAULT_RULES

    def match(self, modalities: Iterable[str], body_parts: Iterable[str]) -> RoutingRule | None:
        mods = [m for m in modalities if m]
        parts = [p for p in body_parts if p]
        for rule in self.rules:
            if rule.matches(mods, parts):
                return rule
        return None

    def quiet_period_s(
        self, modalities: Iterable[str], body_parts: Iterable[str], default: float
    ) -> float:
        """The quiet period of the matching rule, or ``default``."""
        rule = self.match(modalities, body_parts)
        if rule is None or rule.quiet_period_s is None:
            return default
        return rule.quiet_period_s

    @classmethod
    def load(cls, path: Path | None) -> RoutingRules:
        """Read the YAML file at ``path``; ``None`` gives the defaults.

        Raises:
            ConfigurationError: the file cannot be read or a rule is invalid.
        """
        if path is None:
            return cls()
        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigurationError(
                f"routing rules file unreadable: {type(exc).__name__}"
            ) from exc
        return cls.parse(document)

    @classmethod
    def parse(cls, document: Any) -> RoutingRules:
        """Rules from the parsed YAML document (a mapping with a ``rules`` list)."""
        if not isinstance(document, dict) or not isinstance(document.get("rules"), list):
            raise ConfigurationError("routing rules: expected a mapping with a 'rules' list")
        return cls(tuple(_rule(entry, index) for index, entry in enumerate(document["rules"])))


def _rule(entry: Any, index: int) -> RoutingRule:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise ConfigurationError(f"routing rule #{index + 1}: needs a 'name'")
    unknown = set(entry) - {"name", "modalities", "body_parts", "anchor", "quiet_period_s"}
    if unknown:
        raise ConfigurationError(f"routing rule {entry['name']!r}: unknown keys {sorted(unknown)}")
    quiet = entry.get("quiet_period_s")
    if quiet is not None and (not isinstance(quiet, (int, float)) or quiet <= 0):
        raise ConfigurationError(f"routing rule {entry['name']!r}: quiet_period_s must be > 0")
    anchor = entry.get("anchor", True)
    if not isinstance(anchor, bool):
        raise ConfigurationError(f"routing rule {entry['name']!r}: anchor must be true or false")
    return RoutingRule(
        name=entry["name"],
        modalities=_codes(entry.get("modalities"), entry["name"]),
        body_parts=_codes(entry.get("body_parts"), entry["name"]),
        anchor=anchor,
        quiet_period_s=None if quiet is None else float(quiet),
    )


def _codes(value: Any, name: str) -> frozenset[str]:
    if value is None:
        return frozenset()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise ConfigurationError(f"routing rule {name!r}: expected a list of strings")
    return frozenset(v.strip().upper() for v in value if v.strip())

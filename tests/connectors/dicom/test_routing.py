"""Routing rules from YAML: matching, defaults, quiet periods, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from cds.core.errors import ConfigurationError
from connectors.dicom.routing import RoutingRules

YAML = """
rules:
  - name: chest-radiograph
    modalities: [CR, DX]
    body_parts: [chest]
    quiet_period_s: 5
  - name: any-ct
    modalities: CT
    anchor: false
"""


def test_first_matching_rule_wins_case_insensitively(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(YAML)
    rules = RoutingRules.load(path)
    rule = rules.match(["dx"], ["CHEST"])
    assert rule is not None and rule.name == "chest-radiograph" and rule.anchor
    ct = rules.match(["CT"], ["ABDOMEN"])
    assert ct is not None and ct.name == "any-ct" and not ct.anchor
    assert rules.match(["MR"], ["CHEST"]) is None
    assert rules.quiet_period_s(["CR"], ["CHEST"], 30.0) == 5.0
    assert rules.quiet_period_s(["CT"], [], 30.0) == 30.0
    assert rules.quiet_period_s(["US"], [], 30.0) == 30.0


def test_defaults_make_chest_radiographs_anchors() -> None:
    rules = RoutingRules.load(None)
    rule = rules.match(["CR"], ["CHEST"])
    assert rule is not None and rule.anchor
    assert rules.match(["CR"], ["HAND"]) is None
    assert rules.match(["CT"], ["CHEST"]) is None


@pytest.mark.parametrize(
    "document",
    [
        None,
        {"rules": "nope"},
        {"rules": [{"modalities": ["CR"]}]},
        {"rules": [{"name": "x", "quiet_period_s": -1}]},
        {"rules": [{"name": "x", "anchor": "yes"}]},
        {"rules": [{"name": "x", "modality": ["CR"]}]},
        {"rules": [{"name": "x", "modalities": [1]}]},
    ],
)
def test_invalid_rules_are_refused(document: object) -> None:
    with pytest.raises(ConfigurationError):
        RoutingRules.parse(document)


def test_unreadable_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        RoutingRules.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules: [\n")
    with pytest.raises(ConfigurationError):
        RoutingRules.load(bad)

"""Card rules (CDS Hooks 2.0 §Card) and the wire objects' golden JSON round trips."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import uuid

import pytest
from pydantic import BaseModel

from cds.core.aligner.task import load_tasks
from cds.fhir.levels import RiskLevels
from cds.hooks.cards import (
    CardSettings,
    pending_card,
    prediction_card,
    summary_with_title,
    waiting_card,
)
from cds.hooks.models import (
    SUMMARY_MAX,
    Card,
    CdsServiceRequest,
    CdsServiceResponse,
    Discovery,
    Feedback,
    Suggestion,
    dump,
)
from cds.hooks.service import waiting_for
from cds.hooks.services import discovery, hook_services
from tests.cds.assessments import PREDICTION, final_assessment, insufficient_assessment
from tests.cds.golden import FIXTURES, assert_golden, fixture_names, load

BASE = "https://cds.example.org"


def settings(**changes: object) -> CardSettings:
    base = CardSettings(
        levels=RiskLevels(0.2, 0.5),
        review_url=lambda pid: f"{BASE}/audit/predictions/{pid}",
        model_card_url=lambda name, version: f"{BASE}/models/{name}/{version}",
        icon_url=f"{BASE}/models/icon.png",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_risk_card_matches_golden() -> None:
    card = prediction_card(final_assessment(), settings())
    assert_golden("cdshooks/card-risk.json", dump(card))
    assert card.uuid == str(PREDICTION)
    assert card.summary.endswith("62% (high)") and len(card.summary) < SUMMARY_MAX
    assert card.indicator == "critical"
    assert card.source.url == f"{BASE}/models/cxr-fusion-demo/1.2.0"
    assert card.source.icon == f"{BASE}/models/icon.png"
    detail = card.detail or ""
    for expected in ("62%", "41% to 83%", "90% coverage", "Lactate 4.8 mmol/L", "labs: 2026-03-02"):
        assert expected in detail
    assert "synthetic data" in detail
    assert card.links is not None and card.links[0].url == f"{BASE}/audit/predictions/{PREDICTION}"
    assert all(link.type == "absolute" for link in card.links)
    assert card.suggestions is None and card.selectionBehavior is None
    assert card.overrideReasons


@pytest.mark.parametrize(
    ("probability", "indicator"),
    [(0.05, "info"), (0.2, "warning"), (0.49, "warning"), (0.5, "critical"), (0.97, "critical")],
)
def test_indicator_follows_thresholds(probability: float, indicator: str) -> None:
    card = prediction_card(final_assessment(probability=probability), settings())
    assert card.indicator == indicator


def test_thresholds_are_configurable() -> None:
    card = prediction_card(
        final_assessment(probability=0.3), settings(levels=RiskLevels(0.1, 0.25))
    )
    assert card.indicator == "critical"


def test_not_enough_data_card_never_shows_a_number() -> None:
    card = prediction_card(insufficient_assessment(), settings())
    assert_golden("cdshooks/card-not-enough-data.json", dump(card))
    assert card.indicator == "info"
    assert card.summary.startswith("Not enough data for ")
    assert card.summary.endswith("missing image")
    assert "%" not in card.summary + (card.detail or "")
    assert card.overrideReasons is None and card.suggestions is None


def test_suggestions_only_when_configured_and_then_selection_behavior() -> None:
    configured = {
        k: [Suggestion.model_validate(s) for s in v]
        for k, v in load("cdshooks/config/suggestions.json").items()
    }
    card = prediction_card(final_assessment(), settings(suggestions=configured))
    assert card.selectionBehavior == "at-most-one"
    assert card.suggestions and card.suggestions[0].uuid
    again = prediction_card(final_assessment(), settings(suggestions=configured))
    assert again.suggestions and again.suggestions[0].uuid == card.suggestions[0].uuid
    moderate = prediction_card(final_assessment(probability=0.3), settings(suggestions=configured))
    assert moderate.suggestions is None and moderate.selectionBehavior is None


def test_smart_app_link_when_configured() -> None:
    card = prediction_card(final_assessment(), settings(smart_app_url="https://app.example/launch"))
    assert card.links is not None
    smart = [link for link in card.links if link.type == "smart"]
    assert smart and smart[0].url == "https://app.example/launch"
    assert json.loads(smart[0].appContext or "{}") == {"predictionId": str(PREDICTION)}


def test_summary_stays_under_140_characters_for_long_titles() -> None:
    task = load_tasks()["cxr-deterioration"].model_copy(update={"title": "X" * 300})
    card = prediction_card(final_assessment(task=task), settings())
    assert len(card.summary) < SUMMARY_MAX and card.summary.endswith("62% (high)")
    assert len(summary_with_title("t" * 500, "tail")) < SUMMARY_MAX


def test_pending_and_waiting_cards_say_what_is_missing() -> None:
    task = load_tasks()["cxr-deterioration"]
    at = dt.datetime(2026, 3, 2, 9, 30, tzinfo=dt.UTC)
    pending = pending_card(title=task.title, key="k", cfg=settings(), anchor_at=at)
    assert pending.indicator == "info" and "pending" in pending.summary
    waiting = waiting_card(title=task.title, waiting_for=waiting_for(task), key="k", cfg=settings())
    assert waiting.summary.endswith("waiting for a CR/DX study of the chest")
    for card in (pending, waiting):
        assert not re.search(r"\d+%", card.summary + (card.detail or ""))
        uuid.UUID(card.uuid or "")


def test_markdown_in_data_is_escaped() -> None:
    displays = {("http://loinc.org", "2524-7"): "Lactate *arterial* [x]"}
    card = prediction_card(final_assessment(displays=displays), settings())
    assert r"Lactate \*arterial\* \[x\]" in (card.detail or "")


def test_discovery_matches_golden() -> None:
    document = discovery(hook_services(load_tasks()))
    assert_golden("cdshooks/discovery.json", dump(document))
    hooks = {s.hook for s in document.services}
    assert hooks == {"patient-view", "order-select", "order-sign"}
    assert all(
        s.prefetch == {"patient": "Patient/{{context.patientId}}"} for s in document.services
    )


_MODELS: dict[str, type[BaseModel]] = {
    "discovery": Discovery,
    "request": CdsServiceRequest,
    "response": CdsServiceResponse,
    "card": Card,
    "feedback": Feedback,
}


@pytest.mark.parametrize("name", fixture_names("cdshooks"))
def test_every_cds_hooks_fixture_round_trips(name: str) -> None:
    data = json.loads((FIXTURES / "cdshooks" / name).read_text(encoding="utf-8"))
    model = _MODELS[name.split("-", 1)[0].split(".", 1)[0]]
    assert dump(model.model_validate(data)) == data


def test_response_fixture_is_a_valid_response() -> None:
    response = CdsServiceResponse(cards=[prediction_card(final_assessment(), settings())])
    assert_golden("cdshooks/response-patient-view.json", dump(response))

"""``cdsfusion demo``: send synthetic patients through a running engine and show the result.

For each patient, as a hospital would: the admission, labs, vitals and notes over HL7v2
MLLP; the chest radiograph over DICOM C-STORE. Then it waits for the RiskAssessment
(after the study's quiet period), reads it over FHIR, makes a CDS Hooks patient-view call
as the EHR would, and prints both with the URL of the prediction's review page. It exits
non-zero, naming the step, if anything fails.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import time
import uuid
from typing import Any

import click
import httpx

from cds.core.cli.common import load_settings
from cds.core.settings import Settings
from cds.demo.senders import SendError, send_patient

DEMO_SYSTEM = "SYNTHETIC"  # the assigning authority of the synthetic MRNs (HL7 and DICOM)


class StepFailed(click.ClickException):
    """A demo step failed; the message names it."""

    exit_code = 1


def _step(name: str) -> None:
    click.echo(f"-> {name}", err=True)


def live_patients(count: int, seed: int) -> list[Any]:
    """A synthetic cohort whose studies are being acquired now (all modalities present)."""
    from fusion.synthetic import generate_cohort

    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    present = {"image": 0.0, "notes": 0.0, "labs": 0.0, "vitals": 0.0}
    cohort = generate_cohort(count, seed=seed, missing_rates=present)
    # The data is "live": the study is being acquired now, the labs came in before it.
    return [dataclasses.replace(p, anchor=now - dt.timedelta(minutes=2)) for p in cohort]


def _send(patient: Any, settings: Settings, host: str) -> None:
    _step(
        f"HL7v2 over MLLP to {host}:{settings.mllp_port}, then DICOM C-STORE to "
        f"{settings.dicom_ae_title}@{host}:{settings.dicom_port}"
    )
    try:
        codes, statuses = send_patient(
            patient,
            host=host,
            mllp_port=settings.mllp_port,
            dicom_port=settings.dicom_port,
            called_ae=settings.dicom_ae_title,
        )
    except SendError as exc:
        raise StepFailed(f"sending failed: {exc}") from exc
    if any(code != "AA" for code in codes):
        raise StepFailed(f"HL7 not accepted: ACK codes {codes}")
    click.echo(f"   {len(codes)} messages acknowledged AA (admission, results, notes)", err=True)
    if any(status != 0 for status in statuses):
        raise StepFailed(f"DICOM not stored: statuses {[hex(s) for s in statuses]}")
    click.echo(f"   {len(statuses)} chest radiograph instance(s) stored", err=True)


def _find_patient(client: httpx.Client, mrn: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        found = client.post("/fhir/Patient/_search", data={"identifier": f"{DEMO_SYSTEM}|{mrn}"})
        if found.status_code != 200:
            raise StepFailed(f"patient search failed: HTTP {found.status_code}")
        entries = found.json().get("entry", [])
        if entries:
            resource: dict[str, Any] = entries[0]["resource"]
            return resource
        if time.monotonic() > deadline:
            raise StepFailed("the patient never appeared on the timeline")
        time.sleep(0.5)


def _wait_for_assessment(client: httpx.Client, patient_id: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        found = client.get("/fhir/RiskAssessment", params={"patient": patient_id})
        if found.status_code != 200:
            raise StepFailed(f"RiskAssessment search failed: HTTP {found.status_code}")
        for entry in found.json().get("entry", []):
            resource: dict[str, Any] = entry.get("resource", {})
            if resource.get("resourceType") == "RiskAssessment":
                return resource
            if resource.get("resourceType") == "OperationOutcome":
                diagnostics = "; ".join(i.get("diagnostics", "") for i in resource["issue"])
                raise StepFailed(f"the engine made no RiskAssessment: {diagnostics}")
        if time.monotonic() > deadline:
            raise StepFailed(
                f"no RiskAssessment within {timeout_s:.0f} s (the study completes after its "
                "quiet period, CDSFUSION_DICOM_QUIET_PERIOD_S; is the worker running?)"
            )
        time.sleep(1.0)


def _patient_view(client: httpx.Client, patient: dict[str, Any]) -> list[dict[str, Any]]:
    services = client.get("/cds-services")
    if services.status_code != 200:
        raise StepFailed(f"CDS Hooks discovery failed: HTTP {services.status_code}")
    service = next((s for s in services.json()["services"] if s["hook"] == "patient-view"), None)
    if service is None:
        raise StepFailed("the engine offers no patient-view service")
    request = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/demo", "patientId": patient["id"]},
        "prefetch": {"patient": patient},
    }
    answer = client.post(f"/cds-services/{service['id']}", json=request)
    if answer.status_code == 401:
        raise StepFailed(
            "the CDS Hooks call was refused (401): the engine verifies EHR JWTs; for a local "
            "demo start it with CDSFUSION_CDS_HOOKS_AUTH_DISABLED=true (`make run` does)"
        )
    if answer.status_code != 200:
        raise StepFailed(f"CDS Hooks call failed: HTTP {answer.status_code}")
    cards: list[dict[str, Any]] = answer.json().get("cards", [])
    return cards


@click.command()
@click.option(
    "--patients",
    "count",
    type=int,
    default=1,
    show_default=True,
    help="How many synthetic patients to send.",
)
@click.option("--seed", type=int, default=None, help="Cohort seed (default: from the clock).")
@click.option("--host", default="127.0.0.1", show_default=True, help="The engine's host.")
@click.option(
    "--timeout",
    "timeout_s",
    type=float,
    default=None,
    help="Seconds to wait for each result (default: quiet period + 120).",
)
def demo(count: int, seed: int | None, host: str, timeout_s: float | None) -> None:
    """Send synthetic patients through a running engine and print what comes back.

    Ports and the AE title come from the same CDSFUSION_* settings as `cdsfusion serve`.
    Every patient is synthetic; so is the model's training data.
    """
    settings = load_settings()
    seed = seed if seed is not None else int(time.time()) % 1_000_000
    wait_s = timeout_s or settings.dicom_quiet_period_s + 120
    base = settings.public_base_url or f"http://{host}:{settings.http_port}"
    click.echo(
        f"cdsfusion demo: {count} synthetic patient(s), seed {seed}, engine {base}", err=True
    )
    with httpx.Client(base_url=f"http://{host}:{settings.http_port}", timeout=30) as client:
        try:
            client.get("/healthz").raise_for_status()
        except httpx.HTTPError as exc:
            raise StepFailed(
                f"the engine is not answering at {base} ({type(exc).__name__}); "
                "start it with `make run`"
            ) from exc
        patients = live_patients(count, seed)
        for patient in patients:
            _send(patient, settings, host)
        for n, patient in enumerate(patients, 1):
            _step(f"patient {n}/{count}: waiting for the study to complete and be scored")
            fhir_patient = _find_patient(client, patient.patient_id, wait_s)
            assessment = _wait_for_assessment(client, fhir_patient["id"], wait_s)
            cards = _patient_view(client, fhir_patient)
            _print(assessment, cards, base)


def _print(assessment: dict[str, Any], cards: list[dict[str, Any]], base: str) -> None:
    click.echo("\nRiskAssessment (FHIR R4):")
    click.echo(json.dumps(assessment, indent=2))
    click.echo("\nCDS Hooks card (patient-view):")
    click.echo(json.dumps(cards, indent=2))
    click.echo(f"\nReview page: {base}/audit/predictions/{assessment['id']}\n")

"""The CDS services this engine offers: one per prediction task and hook.

Service ids are ``{task id}-{hook}`` (``cxr-deterioration-patient-view``). Each declares the
prefetch template ``patient: Patient/{{context.patientId}}`` (CDS Hooks 2.0 §Prefetch
Template): the Patient's identifiers tie the EHR's patient to the engine's timeline when
the engine has not seen the patient by its FHIR id on that server.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cds.core.aligner.task import TaskDefinition
from cds.hooks.models import CdsService, Discovery

#: The hooks served, with how each shows the risk.
HOOKS = {
    "patient-view": "when the patient's chart is opened",
    "order-select": "while orders are selected",
    "order-sign": "before orders are signed",
}
PATIENT_PREFETCH = "Patient/{{context.patientId}}"


@dataclass(frozen=True)
class HookService:
    """One service: a task shown on one hook."""

    id: str
    hook: str
    task: TaskDefinition

    def describe(self) -> CdsService:
        return CdsService(
            hook=self.hook,
            title=self.task.title,
            description=(
                f"Shows the latest stored '{self.task.title}' prediction {HOOKS[self.hook]}: "
                "probability with its interval, top contributing factors and data times, or "
                "what is pending or missing. Never computes a new score during the call."
            ),
            id=self.id,
            prefetch={"patient": PATIENT_PREFETCH},
            usageRequirements=(
                "Send a JWT signed RS384 or ES384 by a trusted issuer; prefetch the Patient "
                "or grant fhirAuthorization to read it."
            ),
        )


def hook_services(tasks: Mapping[str, TaskDefinition]) -> dict[str, HookService]:
    """Every service, by id, in a stable order."""
    services: dict[str, HookService] = {}
    for task_id in sorted(tasks):
        for hook in HOOKS:
            service = HookService(f"{task_id}-{hook}", hook, tasks[task_id])
            services[service.id] = service
    return services


def discovery(services: Mapping[str, HookService]) -> Discovery:
    """The discovery document (CDS Hooks 2.0 §Discovery)."""
    return Discovery(services=[s.describe() for s in services.values()])

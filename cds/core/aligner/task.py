"""Prediction-task definitions: what anchors a prediction and which data goes into it.

A task is a YAML file validated on load (see ``tasks/cxr-deterioration.yaml``, the demo
task, for a documented example). Durations are written ``-48h``, ``2h``, ``-7d``, ``30m``,
``0``; a window ``start`` of ``null`` means "any time before" (e.g. the latest
demographics). Windows are relative to the anchor time and include both ends.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from cds.core.db.models import EventKind
from cds.core.errors import ConfigurationError

_DURATION = re.compile(r"^\s*([+-]?)\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: Any) -> dt.timedelta:
    """``"-48h"`` -> ``timedelta(hours=-48)``; numbers are seconds; ``"0"`` is zero."""
    if isinstance(value, dt.timedelta):
        return value
    if isinstance(value, int | float):
        return dt.timedelta(seconds=value)
    if isinstance(value, str):
        if value.strip() in {"0", "+0", "-0"}:
            return dt.timedelta(0)
        match = _DURATION.match(value)
        if match:
            sign, amount, unit = match.groups()
            seconds = float(amount) * _UNIT_SECONDS[unit]
            return dt.timedelta(seconds=-seconds if sign == "-" else seconds)
    raise ValueError(f"not a duration: {value!r} (use e.g. -48h, 2h, -7d, 30m, 0)")


def format_duration(value: dt.timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit in ("w", "d", "h", "m"):
        size = _UNIT_SECONDS[unit]
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


Duration = Annotated[dt.timedelta, BeforeValidator(parse_duration)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Window(_Strict):
    """A time window relative to the anchor; both ends included.

    Attributes:
        start: earliest offset (negative = before the anchor); ``None`` = unbounded.
        end: latest offset.
    """

    start: Duration | None
    end: Duration

    @model_validator(mode="after")
    def _ordered(self) -> Window:
        if self.start is not None and self.start > self.end:
            raise ValueError("window start is after its end")
        return self

    def contains(self, offset: dt.timedelta) -> bool:
        return (self.start is None or offset >= self.start) and offset <= self.end


class Selection(_Strict):
    """Which of the events inside the window become members.

    Attributes:
        mode: ``all``; ``latest`` (the one most recent event); ``last_n_per_code`` (the ``n``
            most recent per code); ``aggregate`` (all, summarised per code by ``aggregates``
            when features are built).
        n: for ``last_n_per_code``. Defaults to 1.
        aggregates: for ``aggregate``: any of min, max, mean, last, count, slope.
    """

    mode: Literal["all", "latest", "last_n_per_code", "aggregate"] = "all"
    n: int = Field(default=1, ge=1, le=1000)
    aggregates: tuple[Literal["min", "max", "mean", "last", "count", "slope"], ...] = ()

    @model_validator(mode="after")
    def _aggregates_need_mode(self) -> Selection:
        if self.mode == "aggregate" and not self.aggregates:
            raise ValueError("selection mode 'aggregate' needs at least one aggregate")
        if self.mode != "aggregate" and self.aggregates:
            raise ValueError("aggregates are only used with selection mode 'aggregate'")
        return self


class ModalitySpec(_Strict):
    """One modality of the bundle (image, labs, vitals, notes, demographics, ...).

    Attributes:
        source: ``timeline`` (events around the anchor) or ``anchor`` (the anchor event
            itself, e.g. the completed imaging study).
        kind: the timeline event kind.
        category: e.g. ``laboratory`` or ``vital-signs`` for observations.
        code_system: system of ``codes``. Defaults to LOINC.
        codes: the codes that matter; empty = any code.
        window: required for ``timeline`` sources.
        selection: which in-window events become members.
        required: a bundle without this modality gets no score ("not enough data").
    """

    source: Literal["timeline", "anchor"] = "timeline"
    kind: EventKind
    category: str | None = None
    code_system: str = "http://loinc.org"
    codes: tuple[str, ...] = ()
    window: Window | None = None
    selection: Selection = Selection()
    required: bool = False

    @model_validator(mode="after")
    def _window_for_timeline(self) -> ModalitySpec:
        if self.source == "timeline" and self.window is None:
            raise ValueError("a timeline modality needs a window")
        if self.source == "anchor" and self.window is not None:
            raise ValueError("an anchor modality takes no window")
        return self

    def matches(
        self, kind: EventKind, category: str | None, system: str | None, code: str | None
    ) -> bool:
        """Whether an event of this kind/category/code belongs to this modality."""
        if kind != self.kind:
            return False
        if self.category is not None and category != self.category:
            return False
        if self.codes:
            return system == self.code_system and code in self.codes
        return True


class AnchorSpec(_Strict):
    """What starts a prediction.

    Attributes:
        kind: ``imaging-study`` (a completed study matching ``modalities``/``body_parts``),
            ``encounter`` (an HL7 admission or FHIR Encounter of ``encounter_classes``),
            ``cds-hooks`` (a CDS Hooks call for the patient), ``schedule`` (every
            ``every`` for patients with an open encounter).
        modalities: DICOM Modality values that match (empty = any).
        body_parts: DICOM BodyPartExamined values that match (empty = any).
        encounter_classes: encounter class codes that match (empty = any).
        every: the period of a ``schedule`` anchor.
    """

    kind: Literal["imaging-study", "encounter", "cds-hooks", "schedule"]
    modalities: tuple[str, ...] = ()
    body_parts: tuple[str, ...] = ()
    encounter_classes: tuple[str, ...] = ()
    every: Duration | None = None

    @model_validator(mode="after")
    def _schedule_has_period(self) -> AnchorSpec:
        if (self.kind == "schedule") != (self.every is not None):
            raise ValueError("'every' is required for, and only for, schedule anchors")
        return self

    @property
    def event_kind(self) -> EventKind | None:
        return {
            "imaging-study": EventKind.IMAGING_STUDY,
            "encounter": EventKind.ENCOUNTER,
        }.get(self.kind)

    def matches_study(self, modalities: list[str], body_parts: list[str]) -> bool:
        """PACS routing: does a completed study with these values anchor this task?"""
        wanted_mod = {m.upper() for m in self.modalities}
        wanted_body = {b.upper() for b in self.body_parts}
        mod_ok = not wanted_mod or bool(wanted_mod & {m.upper() for m in modalities})
        body_ok = not wanted_body or bool(wanted_body & {b.upper() for b in body_parts})
        return mod_ok and body_ok


class Coding(_Strict):
    system: str | None = None
    code: str | None = None
    display: str


class Minimum(_Strict):
    """The least data for a prediction, besides the required modalities.

    Attributes:
        modalities_present: how many modalities must have at least one member.
    """

    modalities_present: int = Field(default=1, ge=1)


class TaskDefinition(_Strict):
    """A prediction task, validated on load.

    Attributes:
        id: stable identifier (letters, digits, dashes), e.g. ``cxr-deterioration``.
        version: bump when the definition changes meaning; stored with every bundle.
        title, description: for people (model card, review page).
        outcome: what is predicted (RiskAssessment.prediction.outcome).
        horizon: how far ahead the outcome is predicted (RiskAssessment whenPeriod).
        anchor: what starts a prediction.
        modalities: name -> spec; names are what the model's inputs are called.
        minimum: least data for a prediction.
        late_data_grace: after the window's end, how long late events still make a new
            bundle version. Defaults to 24 h.
    """

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$")
    version: str = Field(min_length=1, max_length=64)
    title: str
    description: str = ""
    outcome: Coding
    horizon: Duration = dt.timedelta(hours=48)
    anchor: AnchorSpec
    modalities: dict[str, ModalitySpec]
    minimum: Minimum = Minimum()
    late_data_grace: Duration = dt.timedelta(hours=24)

    @model_validator(mode="after")
    def _consistent(self) -> TaskDefinition:
        if not self.modalities:
            raise ValueError("a task needs at least one modality")
        for name, spec in self.modalities.items():
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", name):
                raise ValueError(f"modality name {name!r}: lower-case letters, digits, _")
            if spec.source == "anchor" and spec.kind != self.anchor.event_kind:
                raise ValueError(f"modality {name!r} takes the anchor but kinds differ")
        if self.minimum.modalities_present > len(self.modalities):
            raise ValueError("minimum.modalities_present exceeds the number of modalities")
        return self

    @property
    def fingerprint(self) -> str:
        """sha256 of the canonical definition: changes whenever its meaning does."""
        doc = self.model_dump(mode="json")
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()

    @property
    def reach_before(self) -> dt.timedelta | None:
        """The earliest offset any modality looks at (``None`` when one is unbounded)."""
        starts = [s.window.start for s in self.modalities.values() if s.window is not None]
        return None if any(s is None for s in starts) else min(starts, default=dt.timedelta(0))  # type: ignore[type-var]

    @property
    def reach_after(self) -> dt.timedelta:
        """The latest offset any modality looks at."""
        ends = [s.window.end for s in self.modalities.values() if s.window is not None]
        return max(ends, default=dt.timedelta(0))


def load_task(path: Path) -> TaskDefinition:
    """Read and validate one task file.

    Raises:
        ConfigurationError: unreadable YAML or an invalid definition, naming the file.
    """
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        return TaskDefinition.model_validate(doc)
    except (OSError, yaml.YAMLError, ValueError) as exc:
        raise ConfigurationError(f"task definition {path}: {exc}") from exc


def builtin_task_dir() -> Path:
    """Where the shipped task definitions live."""
    return Path(str(resources.files("cds.core.aligner") / "tasks"))


def load_tasks(directories: list[Path] | None = None) -> dict[str, TaskDefinition]:
    """Every ``*.yaml`` task in the built-in directory and ``directories``, by id.

    Raises:
        ConfigurationError: an invalid file or two tasks with the same id.
    """
    tasks: dict[str, TaskDefinition] = {}
    for directory in [builtin_task_dir(), *(directories or [])]:
        for path in sorted(directory.glob("*.yaml")):
            task = load_task(path)
            if task.id in tasks:
                raise ConfigurationError(f"task id {task.id!r} defined twice ({path})")
            tasks[task.id] = task
    return tasks

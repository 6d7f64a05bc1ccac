"""The root ``cdsfusion`` group."""

from __future__ import annotations

import click

from cds.core.cli.lazy import LazyGroup

_LAZY = {
    "serve": "cds.core.cli.serve:serve",
    "worker": "cds.core.cli.worker:worker",
    "db": "cds.core.cli.db:db",
    "audit": "cds.core.cli.audit:audit",
    "users": "cds.core.cli.users:users",
    "demo": "cds.demo.run:demo",
    "train": "fusion.cli:train_command",
    "evaluate": "fusion.cli:evaluate_command",
    "fhir": "connectors.fhir.cli:fhir",
}
_SUMMARIES = {
    "serve": "Run every listener (HTTP, DICOM, MLLP); embedded mode adds the worker.",
    "worker": "Run a Celery scoring worker (one per GPU).",
    "db": "Database migrations (Alembic).",
    "audit": "Check the hash-chained audit log.",
    "users": "Review-page users: the first admin, clinicians, auditors.",
    "demo": "Send a synthetic patient through a running engine and print the result.",
    "train": "Train the fusion model.",
    "evaluate": "Evaluate a checkpoint: report and metrics.json.",
    "fhir": "Upstream FHIR subscriptions and backfill.",
}


@click.group(cls=LazyGroup, lazy=_LAZY, summaries=_SUMMARIES)
@click.version_option(package_name="cdsfusion")
def cli() -> None:
    """cdsfusion: clinical decision-support integration engine.

    Settings come from CDSFUSION_* environment variables (see README).
    """


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="cdsfusion")

"""Helpers shared by the subcommands: settings and logging from the environment."""

from __future__ import annotations

import click
from pydantic import ValidationError

from cds.core.errors import ConfigurationError
from cds.core.logging_setup import configure_logging
from cds.core.settings import Settings


def load_settings() -> Settings:
    """Build the one settings object from the environment, or exit with a clear message."""
    try:
        settings = Settings()
        settings.check_startable()
    except ValidationError as exc:
        fields = ", ".join(
            "CDSFUSION_" + ".".join(str(p) for p in err["loc"]).upper() for err in exc.errors()
        )
        raise click.ClickException(f"invalid settings: {fields}\n{exc}") from exc
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from exc
    configure_logging(settings.log_level, settings.log_format)
    return settings

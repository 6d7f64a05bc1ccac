"""Commands of the public interface whose capability is not built yet.

Each says so plainly and exits with status 3; later issues replace them.
"""

from __future__ import annotations

import click

from cds.core.cli.common import not_available


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def demo(args: tuple[str, ...]) -> None:
    """Send a synthetic patient through a running engine and print the result."""
    not_available("demo", "needs the connectors, pipeline and CDS outputs")

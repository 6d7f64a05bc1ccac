"""The ``cdsfusion`` command line (names fixed in shared/CONTRACT.md).

Subcommands are imported only when run, so ``cdsfusion --help`` stays fast and the
serving process never imports torch.
"""

from __future__ import annotations

from cds.core.cli.main import cli, main

__all__ = ["cli", "main"]

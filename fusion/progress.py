"""A progress bar: tqdm when installed, otherwise a periodic log line."""

from __future__ import annotations

import importlib
import logging
from typing import Any

logger = logging.getLogger(__name__)


class _LogBar:
    """Fallback progress reporting through logging every 10% of the steps."""

    def __init__(self, total: int, desc: str) -> None:
        self.total, self.desc, self.done = max(1, total), desc, 0

    def update(self, n: int = 1, **postfix: float) -> None:
        step = max(1, self.total // 10)
        before, self.done = self.done, self.done + n
        if before // step != self.done // step or self.done == self.total:
            extra = " ".join(f"{k}={v:.4f}" for k, v in postfix.items())
            logger.info("%s: %d/%d %s", self.desc, self.done, self.total, extra)

    def close(self) -> None:
        """Nothing to release."""


class _TqdmBar:
    def __init__(self, bar: Any) -> None:
        self.bar = bar

    def update(self, n: int = 1, **postfix: float) -> None:
        if postfix:
            self.bar.set_postfix({k: f"{v:.4f}" for k, v in postfix.items()}, refresh=False)
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def progress_bar(total: int, desc: str, enabled: bool = True) -> _LogBar | _TqdmBar:
    """A bar with ``update(n, **postfix)`` and ``close()``.

    Args:
        total: Number of steps.
        desc: Label.
        enabled: False silences the bar (logging only).
    """
    if enabled:
        try:
            tqdm = importlib.import_module("tqdm.auto").tqdm
        except ImportError:
            return _LogBar(total, desc)
        return _TqdmBar(tqdm(total=total, desc=desc, leave=False))
    return _LogBar(total, desc)

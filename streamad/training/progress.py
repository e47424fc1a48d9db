"""A dependency-free progress bar for training epochs."""

from __future__ import annotations

import logging
import sys
import time

logger = logging.getLogger(__name__)


class ProgressBar:
    """Redraw one line on a terminal; log every tenth step elsewhere (files, CI logs).

    Parameters
    ----------
    total
        Number of steps, e.g. the maximum number of epochs.
    label
        Text before the bar.
    enabled
        False draws and logs nothing.
    """

    width = 30

    def __init__(self, total: int, label: str, enabled: bool = True) -> None:
        self.total = max(1, total)
        self.label = label
        self.enabled = enabled
        self.interactive = enabled and sys.stderr.isatty()
        self.started = time.monotonic()

    def update(self, step: int, message: str = "") -> None:
        """Show that ``step`` of ``total`` steps are done, with a short status ``message``."""
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.started
        if self.interactive:
            filled = int(self.width * step / self.total)
            bar = "#" * filled + "-" * (self.width - filled)
            sys.stderr.write(f"\r{self.label} [{bar}] {step}/{self.total} {message} {elapsed:.0f}s ")
            sys.stderr.flush()
        elif step == 1 or step % 10 == 0 or step == self.total:
            logger.info("%s %d/%d %s (%.0f s)", self.label, step, self.total, message, elapsed)

    def close(self) -> None:
        """End the bar's line on a terminal."""
        if self.interactive:
            sys.stderr.write("\n")
            sys.stderr.flush()

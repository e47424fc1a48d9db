"""Hot reload of the model: watch a directory of bundle versions and swap a new one into the engine.

The stream runner calls :meth:`BundleReloader.check` between batches. Every ``interval_s``
seconds it resolves the current version of the model directory (see
:func:`streamad.bundle.resolve_bundle_path`) and, when that is another bundle than the one
in use, loads it and calls :meth:`StreamEngine.swap_bundle`. The load runs in the
caller's thread, so the next poll waits for it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

from streamad.bundle import ModelBundle, load_bundle, resolve_bundle_path
from streamad.engine.engine import StreamEngine

logger = logging.getLogger(__name__)

# Results passed to ``on_result``.
LOADED = "loaded"
REJECTED = "rejected"
FAILED = "failed"


class BundleReloader:
    """Swap the newest bundle of a model directory into an engine, between batches.

    A candidate is identified by its directory and the modification time of its
    ``metadata.json``, so a bundle rewritten in place counts as new. A candidate that fails
    to load, e.g. a directory still being written, is logged and loaded again at the next
    check. One that loads but does not fit the engine (another window, stride or channel
    list) is logged as an error and not tried again until it changes. In both cases the
    engine keeps its model.

    Parameters
    ----------
    engine
        The engine whose bundle is replaced.
    model_path
        The ``--model`` path: a bundle directory or a directory of versions.
    interval_s
        Seconds between two checks of ``model_path``.
    on_result
        Called with ``"loaded"``, ``"rejected"`` or ``"failed"`` after each reload attempt,
        e.g. to count them in metrics.
    loader
        Loads a bundle directory; :func:`streamad.bundle.load_bundle` by default.
    clock
        Monotonic clock in seconds.
    """

    def __init__(
        self,
        engine: StreamEngine,
        model_path: str | Path,
        interval_s: float = 30.0,
        *,
        on_result: Callable[[str], None] | None = None,
        loader: Callable[[Path], ModelBundle] = load_bundle,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s={interval_s!r} (--reload-interval-s) is invalid; use seconds > 0")
        self.engine = engine
        self.model_path = Path(model_path)
        self.interval_s = float(interval_s)
        self.on_result = on_result
        self.loader = loader
        self.clock = clock
        self.failures = 0
        self._next_check = clock() + self.interval_s
        self._current = self._candidate_key(Path(engine.bundle.path)) if engine.bundle.path else None
        self._rejected: tuple | None = None
        self._failed: tuple | None = None

    def check(self) -> bool:
        """Swap in the current bundle of ``model_path`` when it changed and ``interval_s`` has passed.

        Returns True when the engine got a new bundle. Never raises for a missing, broken or
        incompatible bundle: it logs the error and the engine keeps scoring with its model.
        """
        now = self.clock()
        if now < self._next_check:
            return False
        self._next_check = now + self.interval_s
        try:
            path = resolve_bundle_path(self.model_path)
            key = self._candidate_key(path)
        except Exception as error:  # noqa: BLE001 - the daemon keeps its model whatever the directory contains
            self._fail(("resolve", str(error)), f"cannot choose the current version of {self.model_path}: {error}")
            return False
        if key == self._current or key == self._rejected:
            return False

        # NOTE: the load blocks the consuming loop, so a bundle that takes longer to load than
        # max_poll_interval_ms makes the consumer leave its group and rejoin at the next poll.
        try:
            bundle = self.loader(path)
        except Exception as error:  # noqa: BLE001 - a half-written bundle raises JSON, torch or OS errors
            self._fail(("load", key[0]), f"cannot load model bundle {path}, keeping model {self.engine.bundle.version}: {error!r}")
            return False

        if bundle.version == self.engine.bundle.version:
            # E.g. CURRENT now names a copy of the running bundle.
            self._current = key
            self._succeeded()
            return False
        try:
            self.engine.swap_bundle(bundle)
        except ValueError as error:
            self._rejected = key
            self._failed = None
            logger.error("model bundle %s rejected, keeping model %s: %s", path, self.engine.bundle.version, error)
            self._report(REJECTED)
            return False
        self._current = key
        self._succeeded()
        self._report(LOADED)
        return True

    def _candidate_key(self, path: Path) -> tuple:
        try:
            modified = (path / "metadata.json").stat().st_mtime_ns
        except OSError:
            modified = None
        return (str(path.resolve()), modified)

    def _fail(self, cause: tuple, message: str) -> None:
        """Log a failed attempt: the first of a cause (a directory or an error) at ERROR level, repeats at DEBUG level."""
        self.failures += 1
        if cause != self._failed:
            logger.error("%s; retrying every %g s", message, self.interval_s)
            self._failed = cause
        else:
            logger.debug("%s (attempt %d)", message, self.failures)
        self._report(FAILED)

    def _succeeded(self) -> None:
        if self.failures:
            logger.info("model directory %s readable again after %d failed attempts", self.model_path, self.failures)
        self.failures = 0
        self._failed = None

    def _report(self, result: str) -> None:
        if self.on_result is not None:
            self.on_result(result)

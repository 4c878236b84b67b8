"""Messages of long or noteworthy work, through the standard ``logging`` module.

The library logs under the ``"megaclass"`` logger (``megaclass.index`` for class graphs and
indexes, ``megaclass.data`` for data sets, ``megaclass.samplers``) and never configures logging
handlers: the application decides what is shown, e.g.
``logging.getLogger("megaclass").setLevel(logging.INFO)`` and a handler of its own. The
``megaclass`` command shows the INFO messages on stderr (rank 0 only).

``ProgressLog`` reports how far a long loop has come, throttled in time: a loop that finishes
within ``PROGRESS_INTERVAL_S`` logs nothing.
"""

from __future__ import annotations

import logging
import time

PROGRESS_INTERVAL_S = 5.0  # seconds between two progress records of one piece of work


class ProgressLog:
    """``update(done)`` as a loop advances; at most every ``interval_s`` seconds (default
    ``PROGRESS_INTERVAL_S``; the first record only once that long has passed) it logs at INFO
    ``"{what}: {done:,} of {total:,} {unit} ({percent}%)"``. ``finish()`` logs the 100% record
    when any record was logged, so that a reader sees the work end."""

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        total: float,
        unit: str = "classes",
        interval_s: float | None = None,
    ) -> None:
        self.logger, self.what, self.total, self.unit = logger, what, total, unit
        self.interval_s = PROGRESS_INTERVAL_S if interval_s is None else interval_s
        self.last_record = time.monotonic()
        self.logged = False

    def update(self, done: float) -> None:
        """``done``: the work finished so far, in the unit of ``total``."""
        now = time.monotonic()
        if now - self.last_record < self.interval_s or not self.logger.isEnabledFor(logging.INFO):
            return
        self.last_record = now
        self._record(done)

    def finish(self) -> None:
        if self.logged:
            self._record(self.total)

    def _record(self, done: float) -> None:
        percent = 100 * done / self.total if self.total else 100.0
        self.logger.info(
            "%s: %s of %s %s (%d%%)",
            self.what,
            f"{round(done):,}",
            f"{round(self.total):,}",
            self.unit,
            percent,
        )
        self.logged = True

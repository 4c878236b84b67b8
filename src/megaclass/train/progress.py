"""Progress for long runs: a live bar on a terminal, plain periodic lines otherwise."""

from __future__ import annotations

import sys
import time


class Progress:
    """``update(step, **fields)`` after each step; ``line(text)`` prints a message."""

    def __init__(self, total: int, start: int, every: int, enabled: bool = True, stream=None):
        self.total, self.start, self.every, self.enabled = total, start, every, enabled
        self.stream = stream or sys.stderr
        self.live = enabled and self.stream.isatty()
        self.began = time.perf_counter()

    def update(self, step: int, **fields) -> None:
        """``step``: steps done so far (of ``total``)."""
        if not self.enabled or (not self.live and step % self.every and step != self.total):
            return
        elapsed = time.perf_counter() - self.began
        rate = (step - self.start) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        shown = " ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items()
        )
        text = f"step {step}/{self.total} {rate:.2f} it/s eta {_clock(eta)} {shown}"
        if self.live:
            width = 24
            filled = int(width * step / self.total)
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {text}\033[K")
            if step == self.total:
                self.stream.write("\n")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def line(self, text: str) -> None:
        if self.enabled:
            self.stream.write(("\n" if self.live else "") + text + "\n")
            self.stream.flush()


def _clock(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"

"""The terminal: one status line redrawn in place (state and input level), answers printed above it."""

from __future__ import annotations

import sys
import time

from falcon_audio_edge.console import printable

BARS = " ▁▂▃▄▅▆▇█"
STATES = ("listening", "recording", "thinking", "speaking", "paused")


def meter(db: float, width: int = 12) -> str:
    """-60..0 dBFS as a bar of ``width`` cells."""
    frac = min(1.0, max(0.0, (db + 60) / 60))
    full = int(frac * width)
    return "█" * full + " " * (width - full)


class Screen:
    def __init__(self, out=None, min_interval_s: float = 0.1):
        self.out = out or sys.stdout
        self.state = "listening"
        self.level_db = -100.0
        self.hint = ""
        self._status_shown = False
        self._last = 0.0
        self.min_interval_s = min_interval_s

    def status(self, state: str | None = None, level_db: float | None = None, force: bool = False) -> None:
        """Redraw the status line (at most every ``min_interval_s`` unless the state changes)."""
        changed = state is not None and state != self.state
        self.state = state or self.state
        self.level_db = self.level_db if level_db is None else level_db
        now = time.monotonic()
        if not (changed or force) and now - self._last < self.min_interval_s:
            return
        self._last = now
        line = f"[{self.state}] level |{meter(self.level_db)}| {self.level_db:6.1f} dB  {self.hint}"
        self.out.write("\r\x1b[2K" + line)
        self.out.flush()
        self._status_shown = True

    def clear_status(self) -> None:
        if self._status_shown:
            self.out.write("\r\x1b[2K")
            self._status_shown = False

    def line(self, text: str = "") -> None:
        """A permanent line above the status line."""
        self.clear_status()
        self.out.write(text + "\n")
        self.out.flush()

    def write(self, text: str) -> None:
        """Streamed answer text (no newline); control characters shown as escapes, not obeyed."""
        self.clear_status()
        self.out.write(printable(text))
        self.out.flush()

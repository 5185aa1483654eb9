"""Commands typed while the assistant runs, one per line: Enter (push-to-talk start/stop), r, q."""

from __future__ import annotations

import queue
import sys
import threading

COMMANDS = {"": "talk", "r": "reset", "reset": "reset", "q": "quit", "quit": "quit", "h": "help", "help": "help"}
HELP = "commands: Enter = start/stop talking (--push-to-talk), r = new conversation, q = quit"


class Keyboard:
    """Reads lines from stdin in a daemon thread; ``poll`` returns the next command or None."""

    def __init__(self, stream=None):
        self._queue: queue.Queue[str] = queue.Queue()
        self._stream = stream or sys.stdin
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for line in self._stream:
                self._queue.put(COMMANDS.get(line.strip().lower(), "unknown:" + line.strip()))
        except (OSError, ValueError):
            pass  # stdin closed

    def poll(self) -> str | None:
        try:
            return self._queue.get_nowait()
        except queue.Empty:
            return None

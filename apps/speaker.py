"""Spoken replies through espeak-ng (played by espeak-ng itself); text only when it is missing."""

from __future__ import annotations

import shutil
import subprocess
import time

from falcon_audio_edge.console import speakable
from falcon_audio_edge.files import track_child


class Speaker:
    """Says text out loud in a child process that can be stopped at any moment."""

    def __init__(self, enabled: bool = True, voice: str = "en-us", rate: int = 170, warn=print):
        self.binary = shutil.which("espeak-ng") if enabled else None
        self.enabled = self.binary is not None
        self.voice, self.rate = voice, rate
        self._proc: subprocess.Popen | None = None
        if enabled and not self.enabled:
            warn("warning: espeak-ng not found; answers are shown as text only (install espeak-ng to hear them)")

    def say(self, text: str) -> None:
        """Start speaking (returns at once); a previous reply still playing is stopped first."""
        self.stop()
        if not self.enabled or not text.strip():
            return
        cmd = [self.binary, "-v", self.voice, "-s", str(self.rate), "--", speakable(text)]  # no NUL in an argument
        # tracked: a SIGTERM to the assistant stops the voice too (its handler exits at once)
        self._proc = track_child(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    @property
    def speaking(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def wait(self, poll_s: float = 0.05) -> None:
        """Until the reply is said (Ctrl-C reaches the caller, who may ``stop``)."""
        while self.speaking:
            time.sleep(poll_s)

    def stop(self) -> None:
        if self.speaking:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._proc = None

"""A private PulseAudio server for the assistant's tests: a null sink and a virtual microphone fed by it.

Whatever is played into the sink (``paplay``, or the assistant's own espeak-ng voice) comes out of the
microphone ``fa_mic``, which PortAudio reaches through ALSA's ``pulse`` device; a second sink, the headphones,
is heard by nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

SINK, SOURCE = "fa_sink", "fa_mic"
HEADPHONES = "fa_headphones"  # a second sink that nothing records: PULSE_SINK=fa_headphones plays "in headphones"


class PulseServer:
    def __init__(self, folder: Path):
        self.folder = folder
        self.env = {"XDG_RUNTIME_DIR": str(folder), "HOME": str(folder),
                    "PULSE_SERVER": f"unix:{folder}/pulse/native"}  # fmt: skip
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def missing() -> str | None:
        for tool in ("pulseaudio", "pactl", "paplay"):
            if not shutil.which(tool):
                return f"{tool} is not installed (apt-get install pulseaudio pulseaudio-utils)"
        return None

    def start(self) -> None:
        cmd = ["pulseaudio", "--daemonize=no", "--exit-idle-time=-1", "-n", "--disallow-exit",
               "--log-target=stderr", "--load=module-native-protocol-unix",
               f"--load=module-null-sink sink_name={SINK}", f"--load=module-null-sink sink_name={HEADPHONES}",
               f"--load=module-virtual-source source_name={SOURCE} master={SINK}.monitor"]  # fmt: skip
        log = open(self.folder / "pulse.log", "w")  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(cmd, env={**os.environ, **self.env}, stdout=log, stderr=log)
        for _ in range(50):
            if self.pactl("info").returncode == 0:
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"pulseaudio exited: {(self.folder / 'pulse.log').read_text()[-500:]}")
            time.sleep(0.1)
        else:
            raise RuntimeError("pulseaudio did not answer within 5 s")
        self.pactl("set-default-sink", SINK)
        self.pactl("set-default-source", SOURCE)

    def pactl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["pactl", *args], env={**os.environ, **self.env}, capture_output=True, text=True)

    def play(self, wav: Path, wait: bool = True) -> subprocess.Popen:
        proc = subprocess.Popen(["paplay", str(wav)], env={**os.environ, **self.env})
        if wait:
            proc.wait(timeout=60)
        return proc

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None

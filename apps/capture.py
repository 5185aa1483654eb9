"""The microphone through sounddevice (PortAudio): device listing, a 16 kHz mono stream, the input level.

A device that cannot record at 16 kHz is opened at its own rate and resampled (soxr, streaming). Audio
arrives from PortAudio's thread into a queue; ``Microphone.read`` waits for it with a timeout, so a device
that stops delivering (unplugged) is noticed instead of hanging the app, and ``Microphone.close`` gives up on a
stream that does not stop within ``CLOSE_TIMEOUT_S`` instead of blocking for good.
"""

from __future__ import annotations

import atexit
import queue
import sys
import threading
from dataclasses import dataclass

import numpy as np

from falcon_audio_edge.audio import SAMPLE_RATE
from falcon_audio_edge.errors import FaEdgeError

# how long closing a stream may take; PortAudio's stop on a device whose sound server went away can deadlock inside
# PulseAudio's ALSA plugin (seen in tests/test_apps.py, about 1 run in 6), so the stream is then abandoned
CLOSE_TIMEOUT_S = 2.0


class AudioDeviceError(FaEdgeError):
    """No usable input device, or the device failed."""


@dataclass(frozen=True)
class InputDevice:
    index: int
    name: str
    channels: int
    default_rate: float
    is_default: bool


def _sd():
    try:
        import sounddevice as sd
    except OSError as exc:  # PortAudio missing
        raise AudioDeviceError(f"PortAudio is not available ({exc}); install libportaudio2") from exc
    return sd


def input_devices() -> list[InputDevice]:
    sd = _sd()
    try:
        devices = sd.query_devices()
        default = sd.default.device[0]
    except sd.PortAudioError as exc:
        raise AudioDeviceError(f"cannot list audio devices: {exc}") from exc
    return [
        InputDevice(i, d["name"], d["max_input_channels"], d["default_samplerate"], i == default)
        for i, d in enumerate(devices)
        if d["max_input_channels"] > 0
    ]


def resolve_device(spec: str | int | None) -> InputDevice:
    """An index, a (part of a) name, or None for the default input."""
    devices = input_devices()
    if not devices:
        raise AudioDeviceError("no audio input device found (fa-edge devices lists them)")
    if spec is None or spec == "":
        return next((d for d in devices if d.is_default), devices[0])
    if isinstance(spec, int) or str(spec).isdigit():
        match = [d for d in devices if d.index == int(spec)]
    else:
        match = [d for d in devices if str(spec).lower() in d.name.lower()]
    if not match:
        names = ", ".join(f"{d.index}: {d.name}" for d in devices)
        raise AudioDeviceError(f"no input device matches {spec!r}; inputs: {names}")
    return match[0]


def level_dbfs(block: np.ndarray) -> float:
    """RMS level of a block in dB relative to full scale (-100 for digital silence)."""
    rms = float(np.sqrt(np.mean(np.square(block, dtype=np.float64)))) if len(block) else 0.0
    return max(-100.0, 20 * np.log10(rms)) if rms > 0 else -100.0


class Microphone:
    """A running 16 kHz mono input stream; ``read`` returns the next block (float32)."""

    def __init__(self, device: InputDevice, block_ms: int = 32):
        sd = _sd()
        self.device = device
        self.rate = self._pick_rate(sd, device)
        self._queue: queue.Queue[np.ndarray] = queue.Queue(maxsize=1000)
        self._resampler = None
        if self.rate != SAMPLE_RATE:
            import soxr

            self._resampler = soxr.ResampleStream(self.rate, SAMPLE_RATE, 1, dtype="float32")
        self.status_errors = 0
        self._stream = None
        try:
            block = int(self.rate * block_ms / 1000)
            self._stream = sd.InputStream(device=device.index, channels=1, samplerate=self.rate, dtype="float32",
                                          blocksize=block, callback=self._callback)  # fmt: skip
            self._stream.start()
        except sd.PortAudioError as exc:
            self.close()
            raise AudioDeviceError(f"cannot open input device {device.name!r}: {exc}") from exc

    @staticmethod
    def _pick_rate(sd, device: InputDevice) -> int:
        try:
            sd.check_input_settings(device=device.index, channels=1, samplerate=SAMPLE_RATE, dtype="float32")
            return SAMPLE_RATE
        except sd.PortAudioError:
            return int(device.default_rate)  # resampled to 16 kHz

    def _callback(self, data, frames, time_info, status) -> None:
        if status:
            self.status_errors += 1
        try:
            self._queue.put_nowait(data[:, 0].copy())
        except queue.Full:  # the app is busy (thinking): drop the oldest audio, keep the newest
            try:
                self._queue.get_nowait()
                self._queue.put_nowait(data[:, 0].copy())
            except (queue.Empty, queue.Full):
                pass

    def read(self, timeout: float = 1.0) -> np.ndarray:
        """The next block at 16 kHz; AudioDeviceError when the device delivers nothing for ``timeout`` s."""
        try:
            block = self._queue.get(timeout=timeout)
        except queue.Empty:
            active = self._stream is not None and getattr(self._stream, "active", False)
            raise AudioDeviceError(
                f"input device {self.device.name!r} delivered no audio for {timeout:g} s"
                + ("" if active else " (the stream stopped: device unplugged?)")
            ) from None
        if self._resampler is not None:
            block = self._resampler.resample_chunk(block)
        return block

    def drain(self) -> None:
        """Drop what was recorded so far (e.g. the app's own voice)."""
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    def close(self) -> None:
        """Abort and close the stream, in a helper thread given ``CLOSE_TIMEOUT_S``: past that the stream is
        abandoned with one line on stderr, and PortAudio's own clean-up at exit is skipped (it would block on
        the same stream)."""
        stream, self._stream = self._stream, None
        if stream is None:
            return
        done = threading.Event()

        def shut() -> None:
            try:
                stream.abort()  # what is still buffered is not wanted: no drain, which is where a dead device hangs
                stream.close()
            except Exception:  # the device may already be gone
                pass
            finally:
                done.set()

        threading.Thread(target=shut, name="fa-edge-mic-close", daemon=True).start()
        if not done.wait(CLOSE_TIMEOUT_S):
            print(f"warning: input device {self.device.name!r} did not close within {CLOSE_TIMEOUT_S:g} s; "
                  "left open", file=sys.stderr)  # fmt: skip
            atexit.unregister(_sd()._exit_handler)

    def __enter__(self) -> Microphone:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

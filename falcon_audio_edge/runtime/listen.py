"""Listen-first turns: the listening model transcribes the audio, then the answer model answers the transcript.

Audio longer than ``audio.SEGMENT_SECONDS`` is heard in pieces cut at pauses (``audio.pause_segments``), each
transcribed on its own as a fresh turn of the listening model: about a sentence each, which is what the model
was trained on, and a transcription's cost stays in proportion to the audio (a guided search over one long clip
grows with the square of its length).
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from falcon_audio_edge.audio import (
    MIN_SAMPLES,
    MIN_TAIL_SECONDS,
    SAMPLE_RATE,
    SEGMENT_SECONDS,
    SILENCE_PEAK,
    Audio,
    load_audio,
    pause_segments,
    validate_samples,
)
from falcon_audio_edge.errors import FaEdgeError
from falcon_audio_edge.runtime.turn import AskResult, Timings
from falcon_audio_edge.settings import TRANSCRIBE_PROMPT, GenerationSettings

# a piece's transcription stops at this many tokens a second of its audio (+ TOKENS_SLACK): fast speech says
# about 5, so only a runaway reaches it, and the work per piece stays bounded by its length
MAX_TOKENS_PER_SECOND = 12
TOKENS_SLACK = 16


@dataclass
class Heard:
    """What a listen-first turn heard: the transcript and what hearing it took."""

    transcript: str = ""
    pieces: int = 0  # the parts the audio was heard in (1: whole)
    audio_tokens: int = 0
    audio_seconds: float = 0.0
    windows: int = 0
    mel_ms: float = 0.0  # every piece's, those heard early too (listen_ms counts only the wait at the end)
    encoder_ms: float = 0.0
    early_pieces: int = 0  # of them, cut while the utterance was still arriving (heard on the worker)


def samples_of(audio: Audio | np.ndarray | str | Path) -> np.ndarray:
    """The audio's samples, validated as a whole (length, silence, NaN) before it is cut."""
    if isinstance(audio, (str, Path)):
        audio = load_audio(audio)
    if isinstance(audio, Audio):
        return validate_samples(audio.samples, audio.source)
    return validate_samples(audio)


class Hearing:
    """Hears one utterance, from a file or as it arrives from a microphone (``add``): a piece is transcribed as
    soon as no later audio can move its end, so at the end of speech only the rest is left (``finish``). The
    pieces are those ``pause_segments`` cuts the whole utterance into, so the transcript is the same either way.
    The pieces cut during speech are transcribed on a worker thread, in order, so ``add`` returns at once and the
    audio loop that calls it keeps time (llama.cpp and onnxruntime release the GIL while they work).
    ``slack_s``: how much of the audio added last the final utterance may still leave out (an endpointer's
    trimmed end silence). A hearing that is dropped before ``finish`` must be ``close``d: its worker uses the
    model."""

    def __init__(self, chat: Any, listen: GenerationSettings, slack_s: float = 0.0):
        self.chat, self.listen = chat, listen
        self.slack = int(max(0.0, slack_s) * SAMPLE_RATE)
        self.pending = np.zeros(0, dtype=np.float32)  # added, not yet heard
        self.offset = 0  # samples of the utterance heard so far
        self.heard = Heard()
        self.texts: list[str] = []
        self._worker: ThreadPoolExecutor | None = None
        self._queued: list[Future] = []

    def add(self, samples: np.ndarray) -> None:
        """More of the utterance; every piece that is settled is queued for the worker."""
        self.pending = np.concatenate([self.pending, np.asarray(samples, dtype=np.float32).reshape(-1)])
        settled = int((SEGMENT_SECONDS + MIN_TAIL_SECONDS) * SAMPLE_RATE) + self.slack
        while len(self.pending) >= settled:
            _, end = pause_segments(self.pending)[0]
            self._queue(self.pending[:end])
            self.pending, self.offset = self.pending[end:], self.offset + end

    def finish(self, audio: Audio | np.ndarray | str | Path) -> Heard:
        """The whole utterance (it starts with what ``add`` was given): hears the rest; the transcript. Where a
        piece failed while the utterance arrived, the whole utterance is heard afresh (an error that persists
        shows there)."""
        try:
            samples = samples_of(audio)
        except BaseException:
            self.close()
            raise
        if not self._wait():
            self.texts, self.offset, self.heard = [], 0, Heard()
        if len(samples) < self.offset:
            raise FaEdgeError(f"the utterance ({len(samples)} samples) is shorter than what was heard ({self.offset})")
        rest = samples[self.offset :]
        for start, end in pause_segments(rest) if len(rest) else []:
            self._piece(rest[start:end])
        self.heard.transcript = " ".join(self.texts)
        self.heard.audio_seconds = len(samples) / SAMPLE_RATE
        return self.heard

    def close(self) -> None:
        """Stop hearing: queued pieces are dropped and the one being transcribed ends; the model is free after."""
        worker, self._worker, self._queued = self._worker, None, []
        if worker is not None:
            worker.shutdown(wait=True, cancel_futures=True)

    def _queue(self, piece: np.ndarray) -> None:
        if self._worker is None:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fa-edge-hearing")
        self._queued.append(self._worker.submit(self._piece, piece))

    def _wait(self) -> bool:
        """Every piece queued during speech heard, the worker stopped; False where one of them failed."""
        try:
            for future in self._queued:
                self.heard.early_pieces += future.result()
        except FaEdgeError:
            return False
        finally:
            self.close()
        return True

    def _piece(self, piece: np.ndarray) -> bool:
        """Transcribe one piece (False: skipped, too short or too quiet to hold speech)."""
        if len(piece) < MIN_SAMPLES or float(np.max(np.abs(piece))) < SILENCE_PEAK:
            return False
        self.chat.reset_listening()
        cap = int(MAX_TOKENS_PER_SECOND * len(piece) / SAMPLE_RATE) + TOKENS_SLACK
        result = self.chat.ask(
            piece, TRANSCRIBE_PROMPT, replace(self.listen, max_tokens=min(self.listen.max_tokens, cap))
        ).run()
        if result.text.strip():
            self.texts.append(result.text.strip())
        heard = self.heard
        heard.pieces += 1
        heard.audio_tokens += result.audio_tokens
        heard.windows += result.windows
        heard.mel_ms += result.timings.mel_ms
        heard.encoder_ms += result.timings.encoder_ms
        return True


def listen_first_turn(
    chat: Any, audio: Any, prompt: str | None, gen: GenerationSettings, listen: GenerationSettings,
    hearing: Hearing | None = None,
):  # fmt: skip
    """The turn's stream: the answer model's pieces; returns its AskResult with the transcript and the whole
    turn's timings (from the audio to the answer). ``hearing``: the utterance's hearing, begun while it arrived."""
    try:
        answerer = chat.answerer()  # before any work: a bundle without one is refused at once
    except BaseException:
        if hearing is not None:  # its worker stops before anything else uses the model
            hearing.close()
        raise
    answer_gen = replace(gen, ctc_weight=0.0, char_weight=0.0)  # the heads guide the transcription only
    if audio is None:  # nothing to hear: a plain text turn of the answer model's conversation
        turn = answerer.ask(None, prompt, answer_gen)
        yield from turn
        return turn.result
    t0 = time.perf_counter()
    heard = (hearing or Hearing(chat, listen)).finish(audio)
    listen_ms = (time.perf_counter() - t0) * 1e3
    if not heard.transcript:  # nothing heard (noise, silence): nothing to answer, the answer model's turn not taken
        result = AskResult("", [], 0, 0.0, 0, 0, "nothing_heard", Timings(), transcript="")
    else:
        answer = answerer.ask(None, heard.transcript + (f"\n{prompt}" if prompt else ""), answer_gen)
        yield from answer
        result = answer.result
    result.transcript, result.pieces = heard.transcript, heard.pieces
    t = result.timings  # the whole turn: from the audio to the answer
    t.listen_ms, t.mel_ms, t.encoder_ms = listen_ms, heard.mel_ms, heard.encoder_ms
    t.first_token_ms, t.total_ms = t.first_token_ms + listen_ms, t.total_ms + listen_ms
    result.audio_tokens, result.audio_seconds, result.windows = heard.audio_tokens, heard.audio_seconds, heard.windows
    return result

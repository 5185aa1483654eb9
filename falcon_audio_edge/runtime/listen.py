"""Listen-first turns: the listening model transcribes the audio, then the answer model answers the transcript.

An utterance is heard in phrases cut at its pauses (``audio.pause_segments``: the first pause at least
``audio.PHRASE_SECONDS`` into a piece, and no piece over ``audio.SEGMENT_SECONDS``), each transcribed on its own as
a fresh turn of the listening model: about a sentence or less each, which is what the model was trained on. A
transcription's cost stays in proportion to the audio (a guided search over one long clip grows with the square
of its length), and during speech each phrase is heard as soon as it is over, so little is left at the end.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from falcon_audio_edge.audio import (
    MIN_SAMPLES,
    SAMPLE_RATE,
    SEGMENT_SECONDS,
    SILENCE_PEAK,
    Audio,
    cut_ahead,
    load_audio,
    pause_segments,
    piece_end,
    validate_samples,
)
from falcon_audio_edge.errors import FaEdgeError, Interrupted
from falcon_audio_edge.runtime.turn import AskResult, Timings
from falcon_audio_edge.settings import GenerationSettings

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
    speculated: bool = False  # the rest was heard from where a pause began, before the end was confirmed


def samples_of(audio: Audio | np.ndarray | str | Path) -> np.ndarray:
    """The audio's samples, validated as a whole (length, silence, NaN) before it is cut."""
    if isinstance(audio, (str, Path)):
        audio = load_audio(audio)
    if isinstance(audio, Audio):
        return validate_samples(audio.samples, audio.source)
    return validate_samples(audio)


def piece_settings(listen: GenerationSettings, seconds: float) -> GenerationSettings:
    """A piece's transcription: ``listen`` with its tokens capped by the piece's length."""
    cap = int(MAX_TOKENS_PER_SECOND * seconds) + TOKENS_SLACK
    return replace(listen, max_tokens=min(listen.max_tokens, cap))


def listening_positions(chat: Any, listen: GenerationSettings) -> int:
    """The most positions a piece of a listen-first turn fills in the listening context (the longest piece)."""
    return chat.piece_positions(SEGMENT_SECONDS, piece_settings(listen, SEGMENT_SECONDS))


@dataclass
class _Part:
    """One piece heard."""

    text: str
    audio_tokens: int
    windows: int
    mel_ms: float
    encoder_ms: float


@dataclass
class _Guess:
    """A speculation: the rest of the utterance from ``offset`` if it ends where a pause began, being heard."""

    offset: int
    rest: np.ndarray
    future: Future
    stop: threading.Event


class Hearing:
    """Hears one utterance, from a file or as it arrives from a microphone (``add``): a piece is transcribed as
    soon as no later audio can move its end, so at the end of speech only the rest is left (``finish``). The
    pieces are those ``pause_segments`` cuts the whole utterance into, so the transcript is the same either way.
    The pieces cut during speech are transcribed on a worker thread, in order, so ``add`` returns at once and the
    audio loop that calls it keeps time (llama.cpp and onnxruntime release the GIL while they work).
    ``speculate`` starts on the rest when a pause begins, before the end of the utterance is confirmed:
    ``finish`` uses that work where the utterance ended there, and ``unspeculate`` (speech again) drops it.
    A piece whose end is found but not yet sure is heard early: from the moment the pause it ends in is over
    (``audio.cut_ahead``; the utterance may still end within ``MIN_TAIL_SECONDS`` of it, and then it is not cut
    there), and likewise a long piece's cut without a pause (the final utterance may still end less than
    ``slack_s`` after the audio added). That work is taken where the piece settles as it was found (the same
    samples); a piece that settles otherwise drops it, and a speculation whose utterance does not make the cut
    stops it if it is not done (the rest is heard first; it is heard again if speech resumes). ``slack_s``: how
    much of the audio added last the final utterance may still leave out (an endpointer's trimmed end silence).
    A hearing that is dropped before ``finish`` must be ``close``d: its worker uses the model."""

    def __init__(self, chat: Any, listen: GenerationSettings, slack_s: float = 0.0):
        self.chat, self.listen = chat, listen
        self.positions = listening_positions(chat, listen)  # the listening context a piece needs at most
        self.slack = int(max(0.0, slack_s) * SAMPLE_RATE)
        self.pending = np.zeros(0, dtype=np.float32)  # added, not yet heard
        self.offset = 0  # samples of the utterance heard so far
        self.heard = Heard()
        self.texts: list[str] = []
        self._worker: ThreadPoolExecutor | None = None
        self._queued: list[Future] = []
        self._guess: _Guess | None = None
        self._early: dict[int, tuple[Future, threading.Event]] = {}  # end -> a piece from offset heard early
        self._feeds: list[Future] = []  # the settled transcript into the answer model, after each settled piece
        self._fed_ahead = False  # a speculation may have fed the answer model the whole transcript it guessed

    def add(self, samples: np.ndarray) -> None:
        """More of the utterance; every piece that is settled is queued for the worker (none while a
        speculation covers the rest)."""
        self.pending = np.concatenate([self.pending, np.asarray(samples, dtype=np.float32).reshape(-1)])
        while self._guess is None and (end := piece_end(self.pending, False, self.slack)) is not None:
            self._settle(end)
        if self._guess is not None:
            return
        for end in (cut_ahead(self.pending), piece_end(self.pending, False)):  # a pause over; a long piece's cut
            if end is not None and end not in self._early:  # not yet sure: heard now, taken if the piece settles so
                stop = threading.Event()
                self._early[end] = (self._submit(self._hear, self.pending[:end], stop), stop)

    def _settle(self, end: int) -> None:
        """The next ``end`` samples are a piece whatever comes: queued for the worker, or its early hearing taken."""
        early = self._early.pop(end, None)
        self._drop_early()  # pieces from this offset that ended elsewhere
        self._queued.append(early[0] if early is not None else self._submit(self._hear, self.pending[:end]))
        self._feeds.append(self._submit(self._feed_answer, list(self._queued)))
        self.pending, self.offset = self.pending[end:], self.offset + end

    def _feed_answer(self, settled: list[Future], rest: list[_Part | None] | None = None) -> None:
        """On the worker, after the pieces ``settled``: their transcript into the answer model (``start_text``),
        so that at the end only the rest of the question is fed; with the ``rest`` of the utterance heard (a
        speculation), the whole transcript and the template up to the answer. Where a piece failed, nothing is
        fed."""
        try:
            parts = [future.result() for future in settled] + (rest or [])
            texts = [part.text for part in parts if part is not None and part.text]
            if texts:
                self.chat.answerer().start_text(" ".join(texts), whole=rest is not None)
        except (FaEdgeError, CancelledError):  # a piece failed (heard afresh at the end), or the answer model did
            return

    def _drop_early(self, keep_done: bool = False) -> None:
        """Stop the pieces heard early (``keep_done``: those still being heard or queued; a finished one is kept,
        to be taken if its piece settles so)."""
        for end, (future, stop) in list(self._early.items()):
            if not (keep_done and future.done() and not future.cancelled() and future.exception() is None):
                stop.set()
                future.cancel()
                del self._early[end]

    def speculate(self, utterance: np.ndarray) -> None:
        """A pause began: hear the rest of ``utterance`` (the whole of it, as it ends if the pause lasts, all of it
        ``add``ed already) on the worker now, after the pieces queued before it. Its pieces that the utterance
        ends with whatever follows (it only grows) are queued as settled; the rest is the speculation."""
        self.unspeculate()
        if not self._settle_within(utterance):
            return  # not this hearing's utterance, or not all of it added: heard at the end as usual
        self._drop_early(keep_done=True)  # cuts this utterance does not make: the rest comes first
        rest, stop = np.array(utterance[self.offset :], dtype=np.float32), threading.Event()
        self._guess = _Guess(self.offset, rest, self._submit(self._guess_rest, rest, stop, list(self._queued)), stop)
        self._fed_ahead = True

    def _guess_rest(self, rest: np.ndarray, stop: threading.Event, settled: list[Future]) -> list[_Part | None] | None:
        """The speculation: the rest heard, then the whole transcript as it would be (the pieces ``settled`` before
        it and the rest's) into the answer model with the template up to the answer, so that where the guess holds
        the answer's first token waits for nothing but the endpoint."""
        parts = self._hear_rest(rest, stop)
        if parts is not None and not stop.is_set():
            self._feed_answer(settled, parts)
        return parts

    def _settle_within(self, utterance: np.ndarray) -> bool:
        """The pieces ``utterance`` (the whole of it, or all but what more may come) ends whatever follows, settled;
        False where it is not this hearing's or not all of it was added."""
        if len(utterance) < self.offset or len(utterance) > self.offset + len(self.pending):
            return False
        while (end := piece_end(utterance[self.offset :], False)) is not None:
            self._settle(end)
        return True

    def unspeculate(self) -> None:
        """Speech again: the speculation is dropped (it stops at its next token) and hearing goes on as before."""
        guess, self._guess = self._guess, None
        if guess is not None:
            guess.stop.set()
            self.add(np.zeros(0, dtype=np.float32))  # the pieces settled meanwhile

    def finish(self, audio: Audio | np.ndarray | str | Path) -> Heard:
        """The whole utterance (it starts with what ``add`` was given): hears the rest, or takes the
        speculation's where the utterance is the one it guessed; the transcript. Where a piece failed while the
        utterance arrived, the whole utterance is heard afresh (an error that persists shows there)."""
        try:
            samples = samples_of(audio)
            if self._guess is None:  # its pieces heard early are taken, not heard again
                self._settle_within(samples)
            guessed = self._guessed(samples)
        except BaseException:
            self.close()
            raise
        if guessed is None and len(samples) < self.offset:
            raise FaEdgeError(f"the utterance ({len(samples)} samples) is shorter than what was heard ({self.offset})")
        for part in guessed if guessed is not None else self._hear_rest(samples[self.offset :]):
            self._take(part)
        self.heard.speculated = guessed is not None
        self.heard.transcript = " ".join(self.texts)
        self.heard.audio_seconds = len(samples) / SAMPLE_RATE
        return self.heard

    def close(self) -> None:
        """Stop hearing: queued pieces are dropped and the one being transcribed ends; the model is free after,
        and the transcript fed to the answer model so far is taken back."""
        fed = bool(self._feeds) or self._fed_ahead
        self._stop()
        if fed:
            self.chat.answerer().cancel_turn()

    def _stop(self) -> None:
        if self._guess is not None:
            self._guess.stop.set()
        self._drop_early()
        worker, self._worker, self._queued, self._guess, self._feeds = self._worker, None, [], None, []
        if worker is not None:
            worker.shutdown(wait=True, cancel_futures=True)

    def _submit(self, fn, *args) -> Future:
        if self._worker is None:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fa-edge-hearing")
        return self._worker.submit(fn, *args)

    def _guessed(self, samples: np.ndarray) -> list[_Part | None] | None:
        """Every piece queued during speech taken, the worker stopped; the speculation's parts where it guessed
        ``samples`` (else None: the rest is heard now)."""
        guess, parts = self._guess, None
        try:
            if self._take_early() and guess is not None and len(samples) >= guess.offset:
                if np.array_equal(samples[guess.offset :], guess.rest):
                    try:
                        parts = guess.future.result()
                    except FaEdgeError:  # heard afresh: an error that persists shows there
                        parts = None
        finally:
            self._stop()  # what was fed to the answer model stays: the answer goes on from it
        return parts

    def _take_early(self) -> bool:
        """The pieces heard during speech, in order; False where one failed (then all is heard afresh)."""
        try:
            for future in self._queued:
                part = future.result()
                self._take(part)
                self.heard.early_pieces += part is not None
            for future in self._feeds:  # each settled piece's feed, so the answer model's cache is the same each time
                future.result()  # (a feed keeps its errors to itself)
        except FaEdgeError:
            self.texts, self.offset, self.heard = [], 0, Heard()
            return False
        return True

    def _hear_rest(self, rest: np.ndarray, stop: threading.Event | None = None) -> list[_Part | None] | None:
        """Each piece of the rest of the utterance heard (None: ``stop`` was set before one of them)."""
        parts = []
        for start, end in pause_segments(rest) if len(rest) else []:
            if stop is not None and stop.is_set():
                return None
            try:
                parts.append(self._hear(rest[start:end], stop))
            except Interrupted:  # dropped midway: speech came again
                return None
        return parts

    def _hear(self, piece: np.ndarray, stop: threading.Event | None = None) -> _Part | None:
        """Transcribe one piece (None: skipped, too short or too quiet to hold speech); ``stop`` set: Interrupted."""
        if len(piece) < MIN_SAMPLES or float(np.max(np.abs(piece))) < SILENCE_PEAK:
            return None
        gen = piece_settings(self.listen, len(piece) / SAMPLE_RATE)
        result = self.chat.hear_piece(piece, gen, self.positions, stop)
        t = result.timings
        return _Part(result.text.strip(), result.audio_tokens, result.windows, t.mel_ms, t.encoder_ms)

    def _take(self, part: _Part | None) -> None:
        if part is None:
            return
        if part.text:
            self.texts.append(part.text)
        heard = self.heard
        heard.pieces += 1
        heard.audio_tokens += part.audio_tokens
        heard.windows += part.windows
        heard.mel_ms += part.mel_ms
        heard.encoder_ms += part.encoder_ms


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
        if hearing is not None:  # its worker stops before the answer model is used here
            hearing.close()
        turn = answerer.ask(None, prompt, answer_gen)
        yield from turn
        return turn.result
    t0 = time.perf_counter()
    try:
        heard = (hearing or Hearing(chat, listen)).finish(audio)
    except BaseException:  # what the hearing fed the answer model is taken back with the turn
        answerer.cancel_turn()
        raise
    listen_ms = (time.perf_counter() - t0) * 1e3
    if not heard.transcript:  # nothing heard (noise, silence): nothing to answer, the answer model's turn not taken
        answerer.cancel_turn()
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

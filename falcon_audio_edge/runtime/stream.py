"""An audio turn fed while the person speaks: each encoder window goes into the decoder as soon as it is over.

A model trained with encoder windows under 30 s (``dims.audio.window_ms``) hears each window on its own, so a
window's audio tokens are the same whenever it is encoded. ``AudioChat.start_audio`` feeds the turn's opening, and
``AudioStream.add`` then encodes each window the utterance surely runs past and feeds its audio tokens, on a worker
thread (the audio loop that calls ``add`` keeps time; onnxruntime and llama.cpp release the GIL). The turn's
``ask`` takes the windows the utterance starts with and encodes and feeds only the rest. A model heard in 30 s
windows gets the same: one window, fed at the end.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from falcon_audio_edge.audio import SAMPLE_RATE
from falcon_audio_edge.frontend import audio_features, encode_features, window_samples

# the most audio a speculation encodes and feeds: a guess dropped when speech resumes cannot be stopped midway, and
# a 1B-shaped model heard in 30 s windows answered a 20 s question 5.7 s after it ended with guesses at each of its
# pauses, 4.6 s without (fa-edge bench --live, 2026-12-08)
SPECULATE_MAX_S = 10.0


@dataclass
class _Guess:
    """A speculation fed: the utterance guessed, the audio embeddings of its windows not fed before, and the cache's
    length before them (its audio and the text after it follow)."""

    samples: np.ndarray
    embeds: np.ndarray
    mark: int


class AudioStream:
    """The windows of one utterance fed during speech. ``slack_s``: how much of the audio added last the final
    utterance may leave out (an endpointer's trimmed end silence), so a window is fed only once the utterance runs
    past its end whatever that is. ``speculate`` feeds the rest of the utterance as it will be if a pause lasts,
    and the text after the audio, so the turn's first token waits only for the endpoint; ``unspeculate`` (speech
    again) takes it back. ``close`` (or the turn) ends it; a stream dropped unused must be closed."""

    def __init__(self, chat: Any, prompt: str | None = None, slack_s: float = 0.0):
        self.chat, self.prompt = chat, prompt
        self.window = window_samples(chat.dims)
        self.slack = int(max(0.0, slack_s) * SAMPLE_RATE)
        self.samples = np.zeros(0, dtype=np.float32)  # the utterance so far
        self.queued = 0  # windows handed to the worker
        self._fed: list[tuple[np.ndarray, int]] = []  # each window fed: its audio embeddings, the cache's length after
        self._start = chat.backend.n_past  # the cache's length after the turn's opening
        self._worker: ThreadPoolExecutor | None = None
        self._jobs: list[Future] = []
        self._failed = False  # a window could not be fed: the turn feeds the whole utterance
        self._closed = False
        self._guess: Future | None = None  # a speculation being fed, or fed (its _Guess; None: not fed)
        self._stop_guess = threading.Event()

    def add(self, samples: np.ndarray) -> None:
        """More of the utterance; each window it now surely runs past is queued to be encoded and fed (none while
        a speculation covers the rest)."""
        self.samples = np.concatenate([self.samples, np.asarray(samples, dtype=np.float32).reshape(-1)])
        while self._guess is None and len(self.samples) - self.slack >= (self.queued + 1) * self.window:
            part = self.samples[self.queued * self.window : (self.queued + 1) * self.window].copy()
            self._submit(self._feed, part)
            self.queued += 1

    def speculate(self, utterance: np.ndarray) -> None:
        """A pause began: ``utterance`` (all of it added already) is the whole of it if the pause lasts. Its windows
        not fed yet and the text after the audio go in now, on the worker, after the windows queued before."""
        self.unspeculate()
        rest = len(utterance) - self.queued * self.window
        if len(utterance) > len(self.samples) or not 0 <= rest <= SPECULATE_MAX_S * SAMPLE_RATE:
            return  # not all of it added, shorter than what is fed, or too long a rest to guess at each pause
        self._stop_guess = threading.Event()
        self._guess = self._submit(self._feed_guess, np.array(utterance, dtype=np.float32), self._stop_guess)

    def unspeculate(self) -> None:
        """Speech again: the speculation is taken back (on the worker, in order) and feeding goes on as before."""
        guess, self._guess = self._guess, None
        if guess is not None:
            self._stop_guess.set()
            if not guess.cancel():  # begun or done: taken back on the worker, after it
                self._submit(self._drop_guess, guess)
            self.add(np.zeros(0, dtype=np.float32))  # the windows the utterance ran past meanwhile

    def _submit(self, fn, *args) -> Future | None:
        if self._closed:  # after close or take: nothing more goes into the cache
            return None
        self._worker = self._worker or ThreadPoolExecutor(max_workers=1, thread_name_prefix="fa-edge-stream")
        job = self._worker.submit(fn, *args)
        self._jobs.append(job)
        return job

    def _feed(self, part: np.ndarray) -> None:
        if self._failed:
            return
        backend = self.chat.backend
        try:
            embeds = encode_features(audio_features(part, self.chat.dims, "stream"), backend.encode)
            backend.feed_embeddings(embeds)
        except Exception:  # (a window of digital silence, a full context) no more windows after it
            self._failed = True
            raise
        self._fed.append((embeds, backend.n_past))

    def _feed_guess(self, utterance: np.ndarray, stop: threading.Event) -> _Guess | None:
        if stop.is_set() or self._failed or len(utterance) < len(self._fed) * self.window:
            return None
        backend, n = self.chat.backend, len(self._fed)
        features = audio_features(utterance, self.chat.dims, "stream")
        rest = replace(features, mels=features.mels[n:], tokens=features.tokens[n:])
        hidden = self.chat.dims.decoder.hidden
        embeds = encode_features(rest, backend.encode) if rest.mels else np.zeros((0, hidden), np.float32)
        mark = backend.n_past
        after = backend.token_rows(self.chat._ids_after(self.prompt, True))
        backend.feed_embeddings(np.concatenate([embeds, after]))  # (T + M, H): the first token's logits are ready
        return _Guess(utterance, embeds, mark)

    def _drop_guess(self, guess: Future) -> None:
        if (fed := _fed(guess)) is not None:
            self.chat.backend.truncate(fed.mark)

    def take(self, samples: np.ndarray) -> tuple[list[np.ndarray], bool]:
        """The audio embeddings of the windows fed that ``samples`` (the whole utterance) starts with, once the
        worker is done, and whether the rest and the text after the audio are in the cache too (the speculation
        guessed ``samples``); what was fed beyond is taken back (all of it where a window failed: the turn then
        feeds the whole utterance, and an error that persists shows there). Ends the stream."""
        guess, self._guess = self._guess, None
        self.wait()
        self._closed = True
        if self._failed:
            self.chat.backend.truncate(self._start)
            return [], False
        fed = _fed(guess) if guess is not None else None
        if fed is not None and np.array_equal(samples, fed.samples):
            return [e for e, _ in self._fed] + [fed.embeds], True
        if fed is not None:
            self.chat.backend.truncate(fed.mark)
        keep = 0
        for i in range(len(self._fed)):
            span = slice(i * self.window, (i + 1) * self.window)
            if len(samples) < span.stop or not np.array_equal(samples[span], self.samples[span]):
                break
            keep = i + 1
        if keep < len(self._fed):
            self.chat.backend.truncate(self._fed[keep - 1][1] if keep else self._start)
        return [embeds for embeds, _ in self._fed[:keep]], False

    def wait(self) -> None:
        """Every window queued so far fed (``_failed`` where one could not be)."""
        self._stop(cancel=False)

    def close(self) -> None:
        """Stop feeding (the window being fed finishes, the queued ones are dropped); what was fed stays until the
        turn is cancelled."""
        self._stop_guess.set()
        self._closed = True
        self._stop(cancel=True)

    def _stop(self, cancel: bool) -> None:
        if self._worker is not None:  # let go only once it has stopped (an interrupt here leaves it to a later stop)
            self._worker.shutdown(wait=True, cancel_futures=cancel)
            self._worker = None
        jobs, self._jobs = self._jobs, []
        self._failed |= any(not job.cancelled() and job.exception() is not None for job in jobs)


def _fed(guess: Future) -> _Guess | None:
    """What a speculation fed, where it ran to its end (None: it was cancelled, failed or fed nothing)."""
    return guess.result() if guess.done() and not guess.cancelled() and guess.exception() is None else None

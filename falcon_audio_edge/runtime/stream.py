"""An audio turn fed while the person speaks: each encoder window goes into the decoder as soon as it is over.

A model trained with encoder windows under 30 s (``dims.audio.window_ms``) hears each window on its own, so a
window's audio tokens are the same whenever it is encoded. ``AudioChat.start_audio`` feeds the turn's opening, and
``AudioStream.add`` then encodes each window the utterance surely runs past and feeds its audio tokens, on a worker
thread (the audio loop that calls ``add`` keeps time; onnxruntime and llama.cpp release the GIL). The turn's
``ask`` takes the windows the utterance starts with and encodes and feeds only the rest. A model heard in 30 s
windows gets the same: one window, fed at the end.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from falcon_audio_edge.audio import SAMPLE_RATE
from falcon_audio_edge.frontend import audio_features, encode_features, window_samples


class AudioStream:
    """The windows of one utterance fed during speech. ``slack_s``: how much of the audio added last the final
    utterance may leave out (an endpointer's trimmed end silence), so a window is fed only once the utterance runs
    past its end whatever that is. ``close`` (or the turn) ends it; a stream dropped unused must be closed."""

    def __init__(self, chat: Any, slack_s: float = 0.0):
        self.chat = chat
        self.window = window_samples(chat.dims)
        self.slack = int(max(0.0, slack_s) * SAMPLE_RATE)
        self.samples = np.zeros(0, dtype=np.float32)  # the utterance so far
        self.queued = 0  # windows handed to the worker
        self._fed: list[tuple[np.ndarray, int]] = []  # each window fed: its audio embeddings, the cache's length after
        self._start = chat.backend.n_past  # the cache's length after the turn's opening
        self._worker: ThreadPoolExecutor | None = None
        self._jobs: list[Future] = []
        self._failed = False

    def add(self, samples: np.ndarray) -> None:
        """More of the utterance; each window it now surely runs past is queued to be encoded and fed."""
        self.samples = np.concatenate([self.samples, np.asarray(samples, dtype=np.float32).reshape(-1)])
        while len(self.samples) - self.slack >= (self.queued + 1) * self.window:
            part = self.samples[self.queued * self.window : (self.queued + 1) * self.window].copy()
            self._worker = self._worker or ThreadPoolExecutor(max_workers=1, thread_name_prefix="fa-edge-stream")
            self._jobs.append(self._worker.submit(self._feed, part))
            self.queued += 1

    def _feed(self, part: np.ndarray) -> None:
        backend = self.chat.backend
        embeds = encode_features(audio_features(part, self.chat.dims, "stream"), backend.encode)
        backend.feed_embeddings(embeds)
        self._fed.append((embeds, backend.n_past))

    def take(self, samples: np.ndarray) -> list[np.ndarray]:
        """The audio embeddings of the windows fed that ``samples`` (the whole utterance) starts with, once the
        worker is done; what was fed beyond them is taken back from the cache (all of it where a window failed:
        the turn then feeds the whole utterance, and an error that persists shows there). Ends the stream."""
        self.wait()
        if self._failed:
            self.chat.backend.truncate(self._start)
            return []
        keep = 0
        for i in range(len(self._fed)):
            span = slice(i * self.window, (i + 1) * self.window)
            if len(samples) < span.stop or not np.array_equal(samples[span], self.samples[span]):
                break
            keep = i + 1
        if keep < len(self._fed):
            self.chat.backend.truncate(self._fed[keep - 1][1] if keep else self._start)
        return [embeds for embeds, _ in self._fed[:keep]]

    def wait(self) -> None:
        """Every window queued so far fed (``_failed`` where one could not be)."""
        self._stop(cancel=False)

    def close(self) -> None:
        """Stop feeding (the window being fed finishes, the queued ones are dropped); what was fed stays until the
        turn is cancelled."""
        self._stop(cancel=True)

    def _stop(self, cancel: bool) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.shutdown(wait=True, cancel_futures=cancel)
        jobs, self._jobs = self._jobs, []
        self._failed |= any(not job.cancelled() and job.exception() is not None for job in jobs)

"""A turn's start fed ahead of its ``ask``, while the person still speaks: the text before an audio turn's audio, or
a text turn's user text so far (a listen-first transcript growing phrase by phrase, fed to the answer model)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from falcon_audio_edge.errors import FaEdgeError


@dataclass
class Begun:
    """``fed``: the ids in the cache from position ``mark`` on, of which the first ``head`` are the turn's opening
    (the previous answer's close, BOS, the template up to the user's part); ``close``: the previous answer's close
    it took (given back where the start is taken back)."""

    audio: bool  # an audio turn's opening (its ``prompt``), or a text turn's opening and user text so far
    prompt: str | None
    head: int
    fed: list[int]
    mark: int
    close: list[int]


def common_length(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def feed_to(backend: Any, begun: Begun, want: list[int]) -> None:
    """Make the cache from ``begun.mark`` on hold ``want``: what ``begun.fed`` shares with it stays, the rest of
    ``fed`` is taken back and the rest of ``want`` fed (so the cache holds the same tokens as ``want`` fed at once)."""
    keep = common_length(begun.fed, want)
    if keep < len(begun.fed):
        backend.truncate(begun.mark + keep)
        begun.fed = begun.fed[:keep]
    backend.feed_tokens(want[keep:])
    begun.fed = list(want)


class StartsAhead:
    """``AudioChat``'s turns started while the person still speaks: ``start_turn`` (an audio turn's opening) and
    ``start_text`` (a text turn's user text so far), taken back by ``cancel_turn``; the turn itself
    (``AudioChat.prefill``) goes on from what they fed. Uses ``AudioChat._conversing``, ``_prefix_ids`` and
    ``_ids_after``."""

    backend: Any
    layout: Any
    turns: int
    _begun: Begun | None
    _stream: Any  # AudioStream | None
    _close_previous: list[int]

    def start_turn(self, prompt: str | None = None) -> None:
        """Feed the text before the audio of the next audio turn now (while the user is still speaking);
        the next ``ask`` with audio and the same prompt goes on from there. ``cancel_turn`` takes it back."""
        if self._begun is None:
            self._begin(True, prompt)

    def start_text(self, text: str, whole: bool = False) -> None:
        """Feed the next text-only turn's user text so far now (a transcript still being heard), again as it
        grows; the next text-only ``ask`` keeps what its own text shares with it and feeds the rest, so the cache
        holds the same tokens as without it. ``whole``: ``text`` is the turn's whole user text (a transcript
        heard to a guessed end), so the template up to the answer goes in too and an ``ask`` with that text has
        its first token's logits at once. ``cancel_turn`` takes it back; where it does not fit, nothing stays
        fed (the turn itself then says so)."""
        if self._begun is not None and self._begun.audio:
            return
        try:
            begun = self._begun or self._begin(False, None)
            text_ids = self._ids_after(text, False) if whole else self.backend.tokenize(text, special=False)
            feed_to(self.backend, begun, begun.fed[: begun.head] + text_ids)
        except FaEdgeError:  # the context is full, or llama.cpp failed: the turn feeds it all, and says so
            self.cancel_turn()

    def _begin(self, audio: bool, prompt: str | None) -> Begun:
        self._conversing()
        before, _ = self.layout.around_audio(prompt, self.turns == 0)
        mark, close = self.backend.n_past, list(self._close_previous)
        ids = self._prefix_ids(before)
        self.backend.feed_tokens(ids)
        self._close_previous = []
        self._begun = Begun(audio, prompt, len(ids), ids, mark, close)
        return self._begun

    def cancel_turn(self) -> None:
        """Undo ``start_turn``, ``start_audio`` or ``start_text``: the KV cache goes back to where it was."""
        stream, self._stream = self._stream, None
        if stream is not None:  # its worker stops before the cache is cut
            stream.close()
        if self._begun is not None:
            begun, self._begun = self._begun, None
            self.backend.truncate(begun.mark)
            self._close_previous = begun.close

"""A turn's start fed ahead of its ``ask``, while the person still speaks: the text before an audio turn's audio, or
a text turn's user text so far (a listen-first transcript growing phrase by phrase, fed to the answer model)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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

"""One turn's results and its stream: the dataclasses a conversation returns, and how a token is sampled."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from falcon_audio_edge.errors import FaEdgeError
from falcon_audio_edge.settings import GenerationSettings


@dataclass
class Timings:
    """Milliseconds per stage of one turn (first_token: audio ready -> first token out)."""

    listen_ms: float = 0.0  # listen-first turns: the transcription before the answer
    mel_ms: float = 0.0
    encoder_ms: float = 0.0
    prefill_ms: float = 0.0
    first_token_ms: float = 0.0
    decode_ms: float = 0.0
    total_ms: float = 0.0
    tokens_per_s: float = 0.0


@dataclass
class AskResult:
    """One answered turn."""

    text: str
    tokens: list[int]
    audio_tokens: int
    audio_seconds: float
    windows: int
    prompt_tokens: int
    stop_reason: str  # "end_of_turn", "max_tokens", "nothing_heard" (a listen-first turn that heard no words), or
    # "context_full" (the answer filled the decoder's context: the next turn raises ContextFullError until reset)
    timings: Timings = field(default_factory=Timings)
    transcript: str | None = None  # listen-first turns: what the model heard, answered by the answer model
    pieces: int = 0  # listen-first turns: the parts the audio was heard in (long audio is cut at pauses)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["generated_tokens"] = len(self.tokens)
        return data


def sample_token(logits: np.ndarray, settings: GenerationSettings, rng: np.random.Generator) -> int:
    """Greedy at temperature 0; else temperature, top-k, then top-p (nucleus) sampling. Logits that are not all
    finite (a broken model) are an error, not a random token."""
    if not np.all(np.isfinite(logits)):
        bad = int(np.count_nonzero(~np.isfinite(logits)))
        raise FaEdgeError(f"the decoder produced {bad} NaN or infinite logits of {logits.size}; the model is broken")
    if settings.greedy:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / settings.temperature
    order = np.argsort(-scaled)
    if settings.top_k:
        order = order[: settings.top_k]
    probs = np.exp(scaled[order] - scaled[order[0]])
    probs /= probs.sum()
    keep = min(len(probs), int(np.searchsorted(np.cumsum(probs), settings.top_p)) + 1)
    probs = probs[:keep] / probs[:keep].sum()
    return int(order[rng.choice(keep, p=probs)])


class Turn:
    """A streaming answer: iterate for text pieces; ``result`` is set once it is exhausted."""

    def __init__(self, steps: Iterator[str]):
        self._steps = steps
        self.result: AskResult | None = None

    def __iter__(self) -> Iterator[str]:
        result = yield from self._steps
        if result is not None:  # a second iteration finds the generator spent
            self.result = result

    def close(self) -> None:
        """Stop the answer here; the conversation stays usable (the partial answer is part of it)."""
        self._steps.close()

    def run(self) -> AskResult:
        for _ in self:
            pass
        assert self.result is not None
        return self.result

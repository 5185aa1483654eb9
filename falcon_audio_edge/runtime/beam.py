"""CTC-guided beam search for transcription: several hypotheses at once, scored by the LLM and the CTC head.

A hypothesis's score is (1 - w) x its summed LLM log-probability + w x the CTC log-probability that the audio
starts with it (log P that the audio is exactly it, once it ends), w = ``ctc_weight`` + ``char_weight`` (> 0;
the CTC part is then their weighted mean, runtime/chars.py). Both parts only fall as a hypothesis grows, so
once an ended hypothesis scores at least as well as every live one, nothing the search could still find beats
it: the search stops there (or at ``max_tokens``). Each live hypothesis is a sequence of the decoder's KV cache
(``beams_step``): a step decodes one token for each of them in one batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from falcon_audio_edge.errors import Interrupted
from falcon_audio_edge.runtime.ctc import CTCPrefixScorer, candidate_tokens, log_softmax, proposals_of
from falcon_audio_edge.settings import GenerationSettings


class BeamBackend(Protocol):
    def beams_begin(self) -> None: ...
    def beams_step(self, parents: list[int], tokens: list[int]) -> np.ndarray: ...
    def beams_end(self, tokens: list[int]) -> None: ...


@dataclass
class Hypothesis:
    tokens: list[int]
    llm: float  # summed LLM log-probability of the tokens
    ctc: float  # CTC log-probability: the audio starts with the tokens (is exactly them, once ended)
    score: float  # (1 - w) llm + w ctc
    scorer: CTCPrefixScorer | None = None
    ended: bool = False


@dataclass(frozen=True)
class _Extension:
    parent: int
    token: int
    llm: float
    ctc: float
    score: float


def _extensions(
    i: int, hyp: Hypothesis, logits: np.ndarray, gen: GenerationSettings, end: int, k: int, proposed: np.ndarray
):
    """The best ``k`` next tokens of one hypothesis by the LLM (the end of turn, the CTC head's ``proposed``
    tokens), scored."""
    llm = log_softmax(logits)
    candidates = candidate_tokens(llm, k, end, proposed)  # (V,) -> (K,)
    totals = hyp.llm + llm[candidates]
    ctc = hyp.scorer.scores(candidates)  # (k,) log P(audio starts with tokens + c); the end: is exactly tokens
    scores = (1.0 - gen.guide_weight) * totals + gen.guide_weight * ctc
    rows = zip(candidates, totals, ctc, scores, strict=True)
    return [_Extension(i, int(c), float(t), float(x), float(s)) for c, t, x, s in rows]


def _child(parent: Hypothesis, ext: _Extension, end: int) -> Hypothesis:
    scorer = None if ext.token == end else parent.scorer.extended(ext.token)  # an ended one scores nothing more
    return Hypothesis(parent.tokens + [ext.token], ext.llm, ext.ctc, ext.score, scorer, ext.token == end)


def beam_search(
    backend: BeamBackend, logits: np.ndarray, scorer: CTCPrefixScorer, gen: GenerationSettings, end: int,
    stop: Callable[[], bool] | None = None,
) -> Hypothesis:  # fmt: skip
    """The best hypothesis after the prompt whose next-token ``logits`` are given (its end token not included
    in ``tokens``; ``ended`` False if it stopped at ``max_tokens``). The backend's conversation holds exactly
    that hypothesis afterwards. ``stop()`` true before a step: Interrupted, the conversation as it was."""
    width = gen.beam_size
    k = max(gen.ctc_candidates, width)
    proposed = proposals_of(scorer, gen.ctc_proposal_prob)  # one clip: the same for every hypothesis
    live, rows = [Hypothesis([], 0.0, 0.0, 0.0, scorer)], logits[None, :]  # (V,) -> (1, V)
    best_ended: Hypothesis | None = None
    backend.beams_begin()
    try:
        for _ in range(gen.max_tokens):
            if stop is not None and stop():
                raise Interrupted("the transcription was stopped: its result is no longer wanted")
            ranked = sorted(
                (e for i, h in enumerate(live) for e in _extensions(i, h, rows[i], gen, end, k, proposed)),
                key=lambda e: -e.score,
            )
            ranked = [e for e in ranked if np.isfinite(e.score)]
            going = [e for e in ranked if e.token != end][:width]
            for e in ranked:
                if e.token == end and (best_ended is None or e.score > best_ended.score):
                    best_ended = _child(live[e.parent], e, end)
            if not going or (best_ended is not None and best_ended.score >= going[0].score):
                break
            next_live = [_child(live[e.parent], e, end) for e in going]
            rows = backend.beams_step([e.parent for e in going], [e.token for e in going])
            live = next_live
        best = best_ended or max(live, key=lambda h: h.score)  # at max_tokens: a whole transcript if there is one
        chosen = best.tokens[:-1] if best.ended else best.tokens
    except BaseException:
        backend.beams_end([])
        raise
    backend.beams_end(chosen)
    return Hypothesis(chosen, best.llm, best.ctc, best.score, None, best.ended)


class ReplayedBeams:
    """The beam primitives for a backend with one sequence (the PyTorch reference): each step replays each new
    hypothesis from the conversation's end. Slow and exact: for parity checks against a bundle."""

    def __init__(self, backend: Any):
        self.backend, self.base, self.hypotheses = backend, 0, [[]]

    def beams_begin(self) -> None:
        self.base, self.hypotheses = self.backend.n_past, [[]]

    def beams_step(self, parents: list[int], tokens: list[int]) -> np.ndarray:
        self.hypotheses = [self.hypotheses[p] + [t] for p, t in zip(parents, tokens, strict=True)]
        rows = []
        for hypothesis in self.hypotheses:
            self.backend.truncate(self.base)
            self.backend.feed_tokens(hypothesis)
            rows.append(self.backend.logits())
        return np.stack(rows)  # B x (V,) -> (B, V)

    def beams_end(self, tokens: list[int]) -> None:
        self.backend.truncate(self.base)
        if tokens:
            self.backend.feed_tokens(tokens)

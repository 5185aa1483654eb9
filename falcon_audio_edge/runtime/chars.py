"""A character CTC head, and the prefix scoring that lets it steer the LLM's transcription.

The token CTC head (``runtime/ctc.py``) scores the LLM's own tokens, through their input embeddings: a word
the training set never said has an embedding row the CTC loss never pulled towards its sound, and the head
hears a neighbour in meaning instead ("bicycle" -> "boat"). A character head spells what it hears
("agypt" for "Egypt"), so it can back a word it never heard in training. Each guided step scores the
LLM's candidate tokens by the CTC prefix probability of the characters they spell (Watanabe et al. 2017,
as in ``runtime/ctc.py``, over characters): a token's text is lower-cased, letters and the apostrophe are
labels, anything else (white space, hyphens, punctuation, digits) is the space label, emitted lazily (before the
next letter, never twice). A token that adds no letter is scored as if the transcription ended there.

The head (``runtime/charnet.py``) reads the audio embeddings the decoder is fed and gives per-frame
log-probabilities of the labels. Numpy only; ``train/charhead.py`` trains it on a checkpoint's frozen audio
embeddings.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from falcon_audio_edge.runtime.charnet import ALPHABET
from falcon_audio_edge.runtime.ctc import CTCPrefixScorer

SPACE = 1
LABELS = {c: i + 1 for i, c in enumerate(ALPHABET)}
NEG_INF = -np.inf


def text_labels(text: str) -> list[int]:
    """A token's labels: letters and the apostrophe, and a space for anything else (white space, hyphens,
    punctuation, digits), as ``transcript_labels`` spells training targets ("U.S." is "u s" in both)."""
    return [LABELS.get(ch, SPACE) for ch in text.lower()]


def transcript_labels(text: str) -> list[int]:
    """The labels a transcript's audio says: its words, single spaces between, none at either end."""
    words = "".join(ch if ch in LABELS else " " for ch in text.lower()).split()
    return text_labels(" ".join(words))


def _logcumsumexp(x: np.ndarray) -> np.ndarray:
    return np.logaddexp.accumulate(x, axis=0)


def extend(log_probs: np.ndarray, r_n: np.ndarray, r_b: np.ndarray, last: int | None, label: int):
    """One label appended to a prefix: its new (r_nonblank, r_blank) over frames, and log P(audio starts with it).

    The recursions r_n[t] = (r_n[t-1] (+) phi[t-1]) + x[t] and r_b[t] = (r_n[t-1] (+) r_b[t-1]) + blank[t]
    ((+) is log-add) are linear in the probability domain, so each is a cumulative sum and a cumulative
    log-add-exp instead of a loop over frames.
    """
    x, blank = log_probs[:, label], log_probs[:, 0]
    phi = r_b if label == last else np.logaddexp(r_n, r_b)  # a repeated label needs a blank between
    start = x[0] if last is None else NEG_INF  # the first label may take the first frame
    s = np.cumsum(x)
    terms = phi - s
    terms[0] = np.logaddexp(start - s[0], terms[0])
    new_n = np.empty_like(x)
    new_n[0] = start
    new_n[1:] = s[1:] + _logcumsumexp(terms)[:-1]
    sb = np.cumsum(blank)
    new_b = np.empty_like(x)
    new_b[0] = NEG_INF
    new_b[1:] = sb[1:] + _logcumsumexp(new_n - sb)[:-1]
    psi = np.logaddexp.reduce(np.concatenate([[start], phi[:-1] + x[1:]]))
    return new_n, new_b, float(psi)


@dataclass(frozen=True)
class CharState:
    labels: tuple[int, ...]
    pending_space: bool
    r_n: np.ndarray
    r_b: np.ndarray
    score: float  # log P(audio starts with labels); 0 for none


class CharPrefixScorer:
    """The character head's prefix scores of growing token sequences (the same interface as CTCPrefixScorer:
    ``scores``, ``advance``, ``extended``, ``score``, ``end_token``). ``token_text`` gives a token's text."""

    def __init__(self, log_probs: np.ndarray, end_token: int, token_text):
        self.log_probs, self.end_token, self.token_text = log_probs, end_token, token_text
        empty = np.full(len(log_probs), NEG_INF)
        self.state = CharState((), False, empty, np.cumsum(log_probs[:, 0]), 0.0)
        self._children: dict[int, CharState] = {}

    @property
    def score(self) -> float:
        return self.state.score

    @property
    def full(self) -> float:
        """log P(audio is exactly the labels so far)."""
        return float(np.logaddexp(self.state.r_n[-1], self.state.r_b[-1])) if len(self.log_probs) else 0.0

    def _child(self, token: int) -> CharState:
        st = self.state
        labels, pending, r_n, r_b, score = list(st.labels), st.pending_space, st.r_n, st.r_b, st.score
        for label in text_labels(self.token_text(token)):
            if label == SPACE:
                pending = pending or bool(labels)
                continue
            for lab in (SPACE, label) if pending else (label,):
                r_n, r_b, score = extend(self.log_probs, r_n, r_b, labels[-1] if labels else None, lab)
                labels.append(lab)
            pending = False
        return CharState(tuple(labels), pending, r_n, r_b, score)

    def scores(self, candidates: np.ndarray) -> np.ndarray:
        """(K,) token ids -> (K,) log P(audio starts with the characters so far + the token's). A token that
        adds no letter (punctuation, the end of turn) scores log P(audio is exactly the characters so far)."""
        out = np.empty(len(candidates))
        self._children = {}
        for j, token in enumerate(int(c) for c in candidates):
            child = self.state if token == self.end_token else self._child(token)
            self._children[token] = child
            out[j] = child.score if len(child.labels) > len(self.state.labels) else self.full
        return out

    def advance(self, token: int) -> None:
        self.state = self._children.get(token) or self._child(token)
        self._children = {}

    def extended(self, token: int) -> CharPrefixScorer:
        child = copy.copy(self)
        child.advance(token)
        return child


class JointScorer:
    """Token and character CTC prefix scores together: weights ``token_weight`` and ``char_weight``; the LLM's
    own weight is 1 - both (runtime/ctc.py ``guided_choice``)."""

    def __init__(self, token, chars: CharPrefixScorer, token_weight: float, char_weight: float):
        self.token, self.chars = token, chars
        self.token_weight, self.char_weight = token_weight, char_weight
        self.end_token = chars.end_token
        self.x = None if token is None else token.x  # the token head's posteriors (its proposals)

    @property
    def weight(self) -> float:
        return self.token_weight + self.char_weight

    @property
    def score(self) -> float:
        tok = self.token_weight * self.token.score if self.token_weight else 0.0
        return (tok + self.char_weight * self.chars.score) / self.weight

    def scores(self, candidates: np.ndarray) -> np.ndarray:
        """(K,) -> (K,): the weighted mean of the two prefix log-probabilities."""
        tok = self.token_weight * self.token.scores(candidates) if self.token_weight else 0.0
        return (tok + self.char_weight * self.chars.scores(candidates)) / self.weight

    def advance(self, token: int) -> None:
        if self.token_weight:
            self.token.advance(token)
        self.chars.advance(token)

    def extended(self, token: int) -> JointScorer:
        token_part = self.token.extended(token) if self.token_weight else self.token
        return JointScorer(token_part, self.chars.extended(token), self.token_weight, self.char_weight)


def guide_scorer(backend, gen, embeds: np.ndarray, end_token: int, has_ctc_head: bool):
    """The prefix scorer of a guided turn: the token CTC head's, or with ``gen.char_weight`` the character
    head's joined to it (the token head's still proposes tokens when its own weight is 0)."""
    token = CTCPrefixScorer(backend.ctc_posteriors(embeds), end_token) if has_ctc_head else None
    if not gen.char_weight:
        return token
    chars = CharPrefixScorer(
        backend.char_log_probs(embeds), end_token, lambda t: backend.token_bytes(t).decode("utf-8", errors="ignore")
    )
    return JointScorer(token, chars, gen.ctc_weight, gen.char_weight)

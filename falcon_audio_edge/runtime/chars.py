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


def extend(log_probs: np.ndarray, r_n: np.ndarray, r_b: np.ndarray, last: np.ndarray, labels: np.ndarray):
    """One label appended to each of K prefixes: ``r_n``, ``r_b`` (T, K) their r_nonblank and r_blank over
    frames, ``last`` (K,) their last labels (-1: none), ``labels`` (K,) the labels; the new (r_n, r_b) and
    (K,) log P(audio starts with the longer prefix).

    The recursions r_n[t] = (r_n[t-1] (+) phi[t-1]) + x[t] and r_b[t] = (r_n[t-1] (+) r_b[t-1]) + blank[t]
    ((+) is log-add) are linear in the probability domain, so each is a cumulative sum and a cumulative
    log-add-exp down the frames instead of a loop over them; the K prefixes go side by side.
    """
    x, blank = log_probs[:, labels], log_probs[:, :1]  # (T, K), (T, 1)
    phi = np.where(labels == last, r_b, np.logaddexp(r_n, r_b))  # a repeated label needs a blank between
    start = np.where(last < 0, x[0], NEG_INF)  # the first label may take the first frame
    s = np.cumsum(x, axis=0)
    terms = phi - s
    terms[0] = np.logaddexp(start - s[0], terms[0])
    new_n = np.empty_like(x)
    new_n[0] = start
    new_n[1:] = s[1:] + np.logaddexp.accumulate(terms, axis=0)[:-1]
    sb = np.cumsum(blank, axis=0)
    new_b = np.empty_like(x)
    new_b[0] = NEG_INF
    new_b[1:] = sb[1:] + np.logaddexp.accumulate(new_n - sb, axis=0)[:-1]
    psi = np.logaddexp.reduce(np.concatenate([start[None], phi[:-1] + x[1:]]), axis=0)
    return new_n, new_b, psi


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

    def _spelled(self, token: int) -> tuple[tuple[int, ...], bool]:
        """The labels ``token`` appends to the prefix (a space before a letter where one is pending), and
        whether a space is pending after them."""
        out, pending, any_before = [], self.state.pending_space, bool(self.state.labels)
        for label in text_labels(self.token_text(token)):
            if label == SPACE:
                pending = pending or any_before or bool(out)
                continue
            out.extend((SPACE, label) if pending else (label,))
            pending = False
        return tuple(out), pending

    def _children_of(self, tokens: list[int]) -> list[CharState]:
        """The states after each of ``tokens``, their labels extended side by side, one label deep at a time."""
        st, spelled = self.state, [self._spelled(t) for t in tokens]
        k = len(tokens)
        r_n, r_b = np.repeat(st.r_n[:, None], k, axis=1), np.repeat(st.r_b[:, None], k, axis=1)  # (T,) -> (T, K)
        score, last = np.full(k, st.score), np.full(k, st.labels[-1] if st.labels else -1)
        for depth in range(max((len(labels) for labels, _ in spelled), default=0)):
            cols = np.array([j for j, (labels, _) in enumerate(spelled) if len(labels) > depth])
            labels = np.array([spelled[j][0][depth] for j in cols])
            r_n[:, cols], r_b[:, cols], score[cols] = extend(self.log_probs, r_n[:, cols], r_b[:, cols], last[cols],
                                                             labels)  # fmt: skip
            last[cols] = labels
        return [CharState(st.labels + labels, pending, r_n[:, j].copy(), r_b[:, j].copy(), float(score[j]))
                for j, (labels, pending) in enumerate(spelled)]  # fmt: skip

    def scores(self, candidates: np.ndarray) -> np.ndarray:
        """(K,) token ids -> (K,) log P(audio starts with the characters so far + the token's). A token that
        adds no letter (punctuation, the end of turn) scores log P(audio is exactly the characters so far)."""
        tokens = [int(c) for c in candidates if int(c) != self.end_token]
        self._children = dict(zip(tokens, self._children_of(tokens), strict=True))
        if len(tokens) < len(candidates):  # the end of turn: the transcription as it is
            self._children[self.end_token] = self.state
        n = len(self.state.labels)
        return np.array([self._children[int(c)].score if len(self._children[int(c)].labels) > n else self.full
                         for c in candidates])  # fmt: skip

    def advance(self, token: int) -> None:
        self.state = self._children.get(token) or self._children_of([token])[0]
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

"""A character CTC head, and the prefix scoring that lets it steer the LLM's transcription.

The token CTC head (``runtime/ctc.py``) scores the LLM's own tokens, through their input embeddings: a word
the training set never said has an embedding row the CTC loss never pulled towards its sound, and the head
hears a neighbour in meaning instead ("bicycle" -> "boat"). A character head spells what it hears
("agypt" for "Egypt"), so it can back a word it never heard in training. Each guided step scores the
LLM's candidate tokens by the CTC prefix probability of the characters they spell (Watanabe et al. 2017,
as in ``runtime/ctc.py``, over characters): a token's text is lower-cased, letters and the apostrophe are
labels, anything else (white space, hyphens, punctuation, digits) is the space label, emitted lazily (before the
next letter, never twice). A token that adds no letter is scored as if the transcription ended there.

The head reads the audio embeddings the decoder is fed: the embeddings at frames t-c..t+c, concatenated
-> MLP (tanh-approximated GELU) -> ``upsample`` x (1 + labels) logits: (T, H) -> (upsample*T, 1 + L).
The upsampling gives it Whisper's 50 frames a second back (characters come faster than 25 a second).
Numpy only; ``train/charhead.py`` trains it on a checkpoint's frozen audio embeddings.
"""

from __future__ import annotations

import copy
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from falcon_audio_edge.errors import BundleError
from falcon_audio_edge.files import atomic_file
from falcon_audio_edge.runtime.ctc import CTCPrefixScorer, log_softmax

ALPHABET = " abcdefghijklmnopqrstuvwxyz'"  # label i + 1 is ALPHABET[i]; 0 is the blank
SPACE = 1
LABELS = {c: i + 1 for i, c in enumerate(ALPHABET)}
CHAR_HEAD_FILE = "char_head.npz"
NEG_INF = -np.inf


def text_labels(text: str) -> list[int]:
    """A token's labels: letters and the apostrophe, and a space for anything else (white space, hyphens,
    punctuation, digits), as ``transcript_labels`` spells training targets ("U.S." is "u s" in both)."""
    return [LABELS.get(ch, SPACE) for ch in text.lower()]


def transcript_labels(text: str) -> list[int]:
    """The labels a transcript's audio says: its words, single spaces between, none at either end."""
    words = "".join(ch if ch in LABELS else " " for ch in text.lower()).split()
    return text_labels(" ".join(words))


def gelu(x: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation (what the head trains with: torch's approximate="tanh")."""
    return 0.5 * x * (1.0 + np.tanh(np.float32(0.7978845608028654) * (x + np.float32(0.044715) * x**3)))


@dataclass(frozen=True)
class CharHead:
    """Weights of the character head: three linears, (in, out) matrices; ``context`` frames each side."""

    weights: tuple[np.ndarray, ...]  # W0 ((2c+1)H, D), W1 (D, D), W2 (D, upsample * (1 + L))
    biases: tuple[np.ndarray, ...]
    context: int
    upsample: int
    alphabet: str = ALPHABET

    def __post_init__(self) -> None:
        if self.alphabet != ALPHABET:
            raise BundleError(f"character head alphabet {self.alphabet!r} is not this version's {ALPHABET!r}")
        if len(self.weights) != 3 or len(self.biases) != 3:
            raise BundleError(f"character head: 3 linears expected, got {len(self.weights)} weights")
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            if w.ndim != 2 or b.shape != (w.shape[1],):
                raise BundleError(f"character head layer {i}: weight {w.shape} and bias {b.shape} do not fit")
            if i and w.shape[0] != self.weights[i - 1].shape[1]:
                raise BundleError(f"character head layer {i}: takes {w.shape[0]}, gets {self.weights[i - 1].shape[1]}")
        if self.weights[2].shape[1] != self.upsample * (1 + len(ALPHABET)):
            raise BundleError(f"character head: {self.weights[2].shape[1]} outputs, expected upsample {self.upsample}"
                              f" x {1 + len(ALPHABET)} labels")  # fmt: skip

    @property
    def hidden(self) -> int:
        """The width of the audio embeddings it reads."""
        return self.weights[0].shape[0] // (2 * self.context + 1)

    def log_probs(self, embeds: np.ndarray) -> np.ndarray:
        """(T, H) audio embeddings -> (upsample*T, 1 + L) float64 log-probabilities, blank first."""
        n, c = len(embeds), self.context
        padded = np.pad(np.asarray(embeds, dtype=np.float32), ((c, c), (0, 0)))  # (T, H) -> (T + 2c, H)
        x = np.concatenate([padded[i : i + n] for i in range(2 * c + 1)], axis=1)  # -> (T, (2c+1)H)
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = x @ w + b
            x = gelu(x) if i < 2 else x
        return log_softmax(x.reshape(n * self.upsample, -1))  # (T, k(1+L)) -> (kT, 1+L)

    def save(self, path: Path) -> None:
        arrays = {f"w{i}": w.astype(np.float16) for i, w in enumerate(self.weights)}
        arrays |= {f"b{i}": b.astype(np.float16) for i, b in enumerate(self.biases)}
        with open(path, "wb") as f:
            np.savez(f, **arrays, context=np.int64(self.context), upsample=np.int64(self.upsample),
                     alphabet=np.array(self.alphabet))  # fmt: skip


def load_char_head(path: Path, hidden: int | None = None) -> CharHead:
    """A character head from its npz, checked (and against the decoder's width ``hidden``, if given)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            head = CharHead(
                weights=tuple(np.asarray(data[f"w{i}"], dtype=np.float32) for i in range(3)),
                biases=tuple(np.asarray(data[f"b{i}"], dtype=np.float32) for i in range(3)),
                context=int(data["context"]),
                upsample=int(data["upsample"]),
                alphabet=str(data["alphabet"]),
            )
    except (OSError, KeyError, ValueError) as exc:
        raise BundleError(f"cannot read the character head {path}: {exc}") from exc
    if hidden is not None and head.weights[0].shape[0] != (2 * head.context + 1) * hidden:
        raise BundleError(f"{path}: the character head reads {head.hidden}-wide embeddings; the decoder's are {hidden}")
    return head


def copy_char_head(src: Path, dst: Path, hidden: int) -> Path:
    """Copy a character head file after checking it reads ``hidden``-wide embeddings (written whole or not at all)."""
    load_char_head(src, hidden)
    return atomic_file(dst, lambda tmp: shutil.copyfile(src, tmp))


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

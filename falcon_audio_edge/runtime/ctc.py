"""CTC-guided transcription: the trained CTC head's reading of the audio steers the LLM's greedy choices.

Training ties a CTC head to the LLM's input embeddings: a token's score at an audio position is the
position's dot product with the token's embedding row (times a learned scale), and a learned linear
gives the blank. At run time the same head reads the audio embeddings the decoder is fed, and each
step of a transcription rescores the LLM's top candidates with their CTC prefix probability (the
probability that the audio starts with that token sequence; Watanabe et al. 2017, "Hybrid
CTC/attention"). The LLM keeps its fluency; the CTC head keeps it from replacing what was said with
what it expected. Numpy only.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from falcon_audio_edge.errors import BundleError

NEG_INF = -np.inf
TOP_PER_FRAME = 4  # a frame's likeliest tokens kept for acoustic proposals (ctc_proposal_prob)
TOP_MARGIN = 30.0  # log-probability below the likeliest token within which a step's candidates are looked for first


def frame_tops(tokens: np.ndarray, lognorm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each frame's TOP_PER_FRAME likeliest token ids and their log-probabilities: (T, V) -> 2 x (T, m)."""
    m = min(TOP_PER_FRAME, tokens.shape[1])
    ids = np.argpartition(-tokens, m - 1, axis=1)[:, :m]
    return ids, np.take_along_axis(tokens, ids, axis=1).astype(np.float64) - lognorm[:, None]


def proposals(top_ids: np.ndarray, top_logp: np.ndarray, min_prob: float) -> np.ndarray:
    """The tokens some frame gives at least ``min_prob``: what the audio may say that the LLM may not expect."""
    return np.unique(top_ids[top_logp >= np.log(min_prob)]) if min_prob > 0 else np.empty(0, dtype=np.int64)


def proposals_of(scorer, min_prob: float) -> np.ndarray:
    """The token head's proposals for a scorer's clip (none where the scorer has no token head: ``x`` None)."""
    return scorer.x.proposals(min_prob) if scorer.x is not None else np.empty(0, dtype=np.int64)


@dataclass(frozen=True)
class TokenTable:
    """The decoder's token embedding rows (V, H), read a part or a few rows at a time as float32.

    A float32 decoder keeps them float32 (the reference); any other keeps them int8 with one float32 scale per
    row, a quarter of the memory (SmolLM2's 49152 x 576 table: 28 instead of 113 MB, held for the whole
    session). The products are bound by reading the table and an int8 part is widened in cache, so a clip takes
    about as long (natural dev by train.hearing: 1.05 s a clip against 1.08 with float32 rows)."""

    rows: np.ndarray  # (V, H) float32, or int8 with ``scales``
    scales: np.ndarray | None = None  # (V,) float32: row r is rows[r] * scales[r]
    PART = 2048  # rows widened at a time: 2048 x 576 float32 is 4.7 MB

    @classmethod
    def quantized(cls, table: np.ndarray) -> TokenTable:
        """Symmetric int8 per row: each row's largest magnitude maps to 127."""
        table = np.asarray(table, dtype=np.float32)
        peak = np.abs(table).max(axis=1) if table.size else np.zeros(len(table), np.float32)
        if not np.all(np.isfinite(peak)):
            raise BundleError(
                f"the token embeddings hold NaN or infinite values (row {int(np.argmin(np.isfinite(peak)))})"
            )
        scales = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)  # (V,)
        return cls(np.round(table / scales[:, None]).astype(np.int8), scales)

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows.shape

    def take(self, ids: np.ndarray) -> np.ndarray:
        """Rows ``ids`` as float32: (K,) -> (K, H)."""
        rows = self.rows[ids].astype(np.float32)  # a copy, which the scaling may write over
        if self.scales is not None:
            rows *= self.scales[ids][:, None]
        return rows

    def part_products(self, embeds: np.ndarray):
        """(start, embeds @ rows[start : start + PART].T) over the whole table: (T, H) -> (T, c) a part at a time.
        int8 parts are widened into one buffer, reused, and their scales applied to the products (T x c values,
        not c x H)."""
        widened = None if self.scales is None else np.empty((min(self.PART, len(self.rows)), self.shape[1]), np.float32)
        for start in range(0, len(self.rows), self.PART):
            rows = self.rows[start : start + self.PART]
            if widened is None:
                yield start, embeds @ rows.T  # (T, H) @ (H, c) -> (T, c)
                continue
            part = widened[: len(rows)]
            np.copyto(part, rows, casting="unsafe")  # int8 -> float32, exact
            yield start, (embeds @ part.T) * self.scales[start : start + self.PART]  # (T, H) @ (H, c) -> (T, c)


@dataclass(frozen=True)
class CTCHead:
    """Audio embeddings (T, H) -> log-probabilities over blank + vocabulary (T, 1 + V); blank is column 0."""

    table: TokenTable  # (V, H) the decoder's token embeddings
    blank_weight: np.ndarray  # (H,)
    blank_bias: float
    log_scale: float

    def __post_init__(self) -> None:
        if isinstance(self.table, np.ndarray):  # float rows given whole: kept as they are
            object.__setattr__(self, "table", TokenTable(np.asarray(self.table, dtype=np.float32)))
        hidden = self.table.shape[1] if self.table.rows.ndim == 2 else -1
        if self.blank_weight.shape != (hidden,):
            raise BundleError(
                f"CTC head: blank weight has shape {self.blank_weight.shape}, the token table {self.table.shape}"
            )

    def posteriors(self, embeds: np.ndarray) -> HeadPosteriors:
        return HeadPosteriors(self, np.asarray(embeds, dtype=np.float32))

    def log_probs(self, embeds: np.ndarray) -> np.ndarray:
        """All of it, (T, 1 + V): for checks on short inputs (a transcription computes only what it reads)."""
        return self.posteriors(embeds).dense()


class DenseLogProbs:
    """CTC log-probabilities given whole, (T, 1 + V) with the blank first."""

    def __init__(self, log_probs: np.ndarray):
        self.x = np.asarray(log_probs)  # float32 stays float32 (memory); float64 stays exact
        self.n_frames = self.x.shape[0]
        self.blank = self.x[:, 0].astype(np.float64)
        self.top_ids, self.top_logp = frame_tops(self.x[:, 1:], np.zeros(self.n_frames))

    def proposals(self, min_prob: float) -> np.ndarray:
        return proposals(self.top_ids, self.top_logp, min_prob)

    def columns(self, ids: np.ndarray) -> np.ndarray:
        return self.x[:, ids + 1].astype(np.float64)  # (T, 1 + V) -> (T, K)

    def dense(self) -> np.ndarray:
        return self.x


class HeadPosteriors:
    """A CTC head's log-probabilities on one clip, computed as they are read: the per-frame normaliser and
    likeliest tokens once, a part of the token table at a time (memory O(T x part), not O(T x V)), then the
    columns of the tokens a step asks about."""

    def __init__(self, head: CTCHead, embeds: np.ndarray):
        self.head, self.embeds = head, embeds
        self.n_frames = len(embeds)
        self.scale = np.float32(np.exp(head.log_scale))
        blank = embeds @ head.blank_weight + np.float32(head.blank_bias)  # (T, H) @ (H,) -> (T,)
        peak, total = blank.astype(np.float64), np.ones(self.n_frames)  # a running log-sum-exp over the parts
        ids, scores = [], []
        for start, products in head.table.part_products(embeds):
            tokens = products * self.scale  # (T, c)
            new_peak = np.maximum(peak, tokens.max(axis=1, initial=-np.inf))
            total = total * np.exp(peak - new_peak) + np.exp(tokens - new_peak[:, None]).sum(axis=1)
            peak = new_peak
            part_ids, part_scores = frame_tops(tokens, np.zeros(self.n_frames))  # 2 x (T, m)
            ids.append(part_ids + start)
            scores.append(part_scores)
        self.lognorm = peak + np.log(total)
        all_ids, all_scores = np.concatenate(ids, axis=1), np.concatenate(scores, axis=1)  # (T, m x parts)
        best, self.top_logp = frame_tops(all_scores, self.lognorm)
        self.top_ids = np.take_along_axis(all_ids, best, axis=1)
        self.blank = blank.astype(np.float64) - self.lognorm

    def proposals(self, min_prob: float) -> np.ndarray:
        return proposals(self.top_ids, self.top_logp, min_prob)

    def columns(self, ids: np.ndarray) -> np.ndarray:
        """Log-probabilities of tokens ``ids`` at every frame: (K,) -> (T, K)."""
        tokens = self.embeds @ self.head.table.take(ids).T * self.scale  # (T, H) @ (H, K) -> (T, K)
        return tokens.astype(np.float64) - self.lognorm[:, None]

    def dense(self) -> np.ndarray:
        vocab = np.arange(self.head.table.shape[0])
        return np.concatenate([self.blank[:, None], self.columns(vocab)], axis=1).astype(np.float32)  # (T, 1 + V)


class CTCPrefixScorer:
    """Prefix log-probabilities of growing token sequences under one clip's CTC output (T, 1 + V).

    ``scores(candidates)`` gives log P(audio starts with prefix + c) for each candidate c (the end of
    turn: log P(audio is exactly prefix)); ``advance(c)`` appends c to the prefix.
    """

    def __init__(self, log_probs: np.ndarray | DenseLogProbs | HeadPosteriors, end_token: int):
        self.x = DenseLogProbs(log_probs) if isinstance(log_probs, np.ndarray) else log_probs
        self.end_token = end_token
        n_frames = self.x.n_frames
        self.r_nonblank = np.full(n_frames, NEG_INF)  # prefix ends at t in a token frame
        self.r_blank = np.cumsum(self.x.blank)  # ... in a blank frame (the empty prefix: all blank)
        self.prefix: list[int] = []
        self.score = 0.0  # log P(audio starts with prefix); 0 for the empty prefix
        self._pending: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None

    @property
    def full(self) -> float:
        """log P(audio is exactly the prefix)."""
        return float(np.logaddexp(self.r_nonblank[-1], self.r_blank[-1]))

    def scores(self, candidates: np.ndarray) -> np.ndarray:
        """(K,) token ids -> (K,) prefix log-probabilities (not differences)."""
        candidates = np.asarray(candidates, dtype=np.int64)
        n_frames, k = self.x.n_frames, len(candidates)
        xs = self.x.columns(candidates)  # (T, K)
        prev = np.logaddexp(self.r_nonblank, self.r_blank)  # (T,)
        phi = np.repeat(prev[:, None], k, axis=1)  # (T,) -> (T, K)
        if self.prefix:  # a repeat needs a blank between: only the blank-ending paths go on
            phi[:, candidates == self.prefix[-1]] = self.r_blank[:, None]
        r_n, r_b = np.full((n_frames, k), NEG_INF), np.full((n_frames, k), NEG_INF)
        start = max(len(self.prefix), 1)
        if not self.prefix:
            r_n[0] = xs[0]
        psi = r_n[start - 1].copy() if start <= n_frames else np.full(k, NEG_INF)
        for t in range(start, n_frames):
            r_n[t] = np.logaddexp(r_n[t - 1], phi[t - 1]) + xs[t]
            r_b[t] = np.logaddexp(r_n[t - 1], r_b[t - 1]) + self.x.blank[t]
            psi = np.logaddexp(psi, phi[t - 1] + xs[t])
        psi[candidates == self.end_token] = self.full
        self._pending = (candidates, r_n, r_b, psi)
        return psi

    def extended(self, token: int) -> CTCPrefixScorer:
        """A new scorer for the prefix + ``token`` (one of the candidates last scored); this one is unchanged,
        so its other candidates can be extended too (beam search)."""
        child = copy.copy(self)
        child.prefix = list(self.prefix)
        child.advance(token)
        return child

    def advance(self, token: int) -> None:
        """Append ``token`` (one of the candidates last scored) to the prefix."""
        if self._pending is None or token not in self._pending[0]:
            self.scores(np.array([token]))
        candidates, r_n, r_b, psi = self._pending
        j = int(np.flatnonzero(candidates == token)[0])
        self.r_nonblank, self.r_blank, self.score = r_n[:, j].copy(), r_b[:, j].copy(), float(psi[j])
        self.prefix.append(token)
        self._pending = None


def log_softmax(x: np.ndarray) -> np.ndarray:
    """float64 log-softmax over the last axis."""
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def top_ids(x: np.ndarray, k: int) -> np.ndarray:
    """The ids of the ``k`` largest values of ``x`` (V,), in ascending order: found among the values within
    TOP_MARGIN of the largest (a few hundred of a vocabulary's, where a selection over all of them costs a
    millisecond a step), or among all where fewer than ``k`` are that close."""
    if k >= len(x):
        return np.arange(len(x))
    near = np.flatnonzero(x >= x.max() - TOP_MARGIN)  # every value outside is below every one inside
    if len(near) < k:
        near = np.arange(len(x))
    if len(near) > k:
        near = near[np.argpartition(x[near], len(near) - k)[len(near) - k :]]
    return np.sort(near)


def candidate_tokens(llm: np.ndarray, n_candidates: int, end_token: int, proposed: np.ndarray) -> np.ndarray:
    """The LLM's top ``n_candidates`` (log-probabilities ``llm``, (V,)), the end of turn, and the CTC head's
    ``proposed`` tokens: the ids a CTC-guided step scores, each once."""
    top = top_ids(llm, n_candidates)
    extra = np.setdiff1d(np.append(proposed, end_token), top)  # (K,) + the ones not in it yet
    return np.concatenate([top, extra]).astype(np.int64)


def guided_choice(
    logits: np.ndarray, scorer: CTCPrefixScorer, weight: float, n_candidates: int, proposed: np.ndarray | None = None
) -> int:
    """The next token: the LLM's top ``n_candidates`` (and the CTC head's ``proposed`` tokens) rescored as
    (1 - weight) LLM + weight CTC (log domain)."""
    llm = log_softmax(logits)
    candidates = candidate_tokens(llm, n_candidates, scorer.end_token, np.empty(0) if proposed is None else proposed)
    ctc = scorer.scores(candidates)
    if not np.isfinite(scorer.score) or not np.isfinite(ctc).any():  # the audio cannot say more: the LLM alone
        return int(candidates[np.argmax(llm[candidates])])
    ctc = ctc - scorer.score  # log P(candidate | prefix, audio)
    combined = (1.0 - weight) * llm[candidates] + weight * ctc
    return int(candidates[np.argmax(combined)])


def gguf_token_table(path, vocab: int, hidden: int, rows_per_part: int = 1024, tensor=None) -> TokenTable:
    """The decoder's token embedding table (V, H), read from its GGUF a thousand rows at a time (``gguf_tensor``;
    gguf-py's dequantizing makes several copies of a part): nothing else of the file is loaded.
    f32 rows stay f32; f16 and quantized rows are dequantized and kept as int8 per row (``TokenTable``).
    ``tensor``: the table's place in the file where the header was walked already (``TokenRows.tensor``)."""
    from falcon_audio_edge.runtime.gguf_tensor import dequantize_rows, read_tensor

    tensor = tensor or read_tensor(path, "token_embd.weight")
    if tensor.shape != (vocab, hidden):
        raise BundleError(f"{path}: token_embd.weight is {tensor.shape}, the dims say ({vocab}, {hidden})")
    exact = tensor.type == 0  # ggml F32
    rows = np.empty((vocab, hidden), dtype=np.float32 if exact else np.int8)
    scales = None if exact else np.empty(vocab, dtype=np.float32)
    for start in range(0, vocab, rows_per_part):
        raw = tensor.rows(start, start + rows_per_part)
        # f32 and f16 rows viewed as floats, the others dequantized
        part = dequantize_rows(raw, tensor.type, hidden, path)
        if exact:
            rows[start : start + len(raw)] = part
        else:
            small = TokenTable.quantized(part)
            rows[start : start + len(raw)], scales[start : start + len(raw)] = small.rows, small.scales
    return TokenTable(rows, scales)


def load_ctc_head(ctc_file, gguf_file, vocab: int, hidden: int, tensor=None) -> CTCHead:
    """A bundle's CTC head: its own weights from ``ctc_file`` (npz), the token table from the decoder GGUF
    (``tensor``: its place there, found already)."""
    try:
        with np.load(ctc_file, allow_pickle=False) as data:
            parts = {k: np.asarray(data[k], dtype=np.float32) for k in ("blank_weight", "blank_bias", "log_scale")}
    except Exception as exc:  # numpy raises many kinds for a file that is not an npz of these arrays
        raise BundleError(f"cannot read the CTC head {ctc_file}: {str(exc)[:200] or type(exc).__name__}") from exc
    if not all(np.all(np.isfinite(v)) for v in parts.values()):
        raise BundleError(f"{ctc_file}: the CTC head has NaN or infinite weights")
    if parts["blank_bias"].shape != () or parts["log_scale"].shape != ():
        raise BundleError(f"{ctc_file}: blank_bias and log_scale must be scalars")
    if parts["blank_weight"].shape != (hidden,):
        raise BundleError(f"{ctc_file}: blank_weight is {parts['blank_weight'].shape}, the dims say ({hidden},)")
    return CTCHead(
        table=gguf_token_table(gguf_file, vocab, hidden, tensor=tensor),
        blank_weight=parts["blank_weight"],
        blank_bias=float(parts["blank_bias"]),
        log_scale=float(parts["log_scale"]),
    )

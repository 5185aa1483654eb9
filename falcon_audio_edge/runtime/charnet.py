"""The character CTC head's network, in numpy: audio embeddings -> per-frame log-probabilities of characters.

    windows of frames t-c..t+c, concatenated        (T, H) -> (T, (2c+1)H)
    two linears with tanh-approximated GELU          -> (T, D)
    ``len(blocks)`` pre-norm transformer blocks      -> (T, D)   (self-attention over the whole clip, ALiBi
                                                                  distance penalties instead of positions)
    a LayerNorm (only after blocks), an output linear -> (T, upsample * (1 + L)) -> (upsample*T, 1 + L)

The upsampling gives it Whisper's 50 frames a second back (characters come faster than 25 a second). A head
without blocks is the plain MLP the first shipped head was. ``train/charhead.py`` trains the same network in
PyTorch; ``runtime/chars.py`` scores the LLM's tokens with its output.
"""

from __future__ import annotations

import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from falcon_audio_edge.errors import BundleError
from falcon_audio_edge.files import atomic_file
from falcon_audio_edge.runtime.ctc import log_softmax

ALPHABET = " abcdefghijklmnopqrstuvwxyz'"  # label i + 1 is ALPHABET[i]; 0 is the blank
CHAR_HEAD_FILE = "char_head.npz"
LN_EPS = 1e-5
# a transformer block's arrays: name -> (rows, columns) in units of the width D (0: a vector of D * columns)
BLOCK_SHAPES = {
    "ln1_w": (0, 1), "ln1_b": (0, 1), "qkv_w": (1, 3), "qkv_b": (0, 3), "proj_w": (1, 1), "proj_b": (0, 1),
    "ln2_w": (0, 1), "ln2_b": (0, 1), "ff1_w": (1, 4), "ff1_b": (0, 4), "ff2_w": (4, 1), "ff2_b": (0, 1),
}  # fmt: skip


def gelu(x: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation (what the head trains with: torch's approximate="tanh")."""
    return 0.5 * x * (1.0 + np.tanh(np.float32(0.7978845608028654) * (x + np.float32(0.044715) * (x * x * x))))


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + np.float32(LN_EPS)) * w + b


def alibi_slopes(heads: int) -> np.ndarray:
    """Head h's distance penalty per frame: 2^(-8(h+1)/heads), from sharply local to nearly flat."""
    return np.array([2.0 ** (-8.0 * (h + 1) / heads) for h in range(heads)], dtype=np.float32)


def alibi_bias(n: int, heads: int) -> np.ndarray:
    """(heads, n, n) attention logit offsets: -slope_h * |i - j|."""
    dist = np.abs(np.arange(n)[:, None] - np.arange(n)[None, :]).astype(np.float32)
    return -alibi_slopes(heads)[:, None, None] * dist  # (heads,) x (n, n) -> (heads, n, n)


def attention(x: np.ndarray, blk: dict[str, np.ndarray], heads: int, bias: np.ndarray) -> np.ndarray:
    """Bidirectional multi-head self-attention with the ALiBi ``bias`` (heads, T, T): (T, D) -> (T, D)."""
    n, d = x.shape
    qkv = x @ blk["qkv_w"] + blk["qkv_b"]  # (T, D) -> (T, 3D)
    q, k, v = qkv.reshape(n, 3, heads, d // heads).transpose(1, 2, 0, 3)  # (T, 3D) -> 3 x (heads, T, D/heads)
    logits = q @ k.transpose(0, 2, 1) / np.float32(np.sqrt(d // heads)) + bias  # (heads, T, T)
    w = np.exp(logits - logits.max(axis=-1, keepdims=True))
    out = (w / w.sum(axis=-1, keepdims=True)) @ v  # (heads, T, T) @ (heads, T, D/heads) -> (heads, T, D/heads)
    return out.transpose(1, 0, 2).reshape(n, d) @ blk["proj_w"] + blk["proj_b"]  # -> (T, heads, D/h) -> (T, D)


def block(x: np.ndarray, blk: dict[str, np.ndarray], heads: int, bias: np.ndarray) -> np.ndarray:
    """A pre-norm transformer block: x + attention(LN(x)), then + MLP(LN(x))."""
    x = x + attention(layer_norm(x, blk["ln1_w"], blk["ln1_b"]), blk, heads, bias)
    h = gelu(layer_norm(x, blk["ln2_w"], blk["ln2_b"]) @ blk["ff1_w"] + blk["ff1_b"])
    return x + h @ blk["ff2_w"] + blk["ff2_b"]


@dataclass(frozen=True)
class CharHead:
    """Weights of the character head: three linears as (in, out) matrices (front, front, output), ``context``
    frames each side, and optionally transformer blocks with a final LayerNorm ``norm`` (weight, bias)."""

    weights: tuple[np.ndarray, ...]  # W0 ((2c+1)H, D), W1 (D, D), W2 (D, upsample * (1 + L))
    biases: tuple[np.ndarray, ...]
    context: int
    upsample: int
    alphabet: str = ALPHABET
    blocks: tuple[dict[str, np.ndarray], ...] = ()
    heads: int = 0
    norm: tuple[np.ndarray, ...] = field(default=())

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
        self._check_blocks()

    def _check_blocks(self) -> None:
        d = self.weights[1].shape[1]
        if not self.blocks:
            if self.norm or self.heads:
                raise BundleError(f"character head: heads={self.heads} and {len(self.norm)} final norm arrays, "
                                  "but no transformer blocks")  # fmt: skip
            return
        if self.heads < 1 or d % self.heads:
            raise BundleError(f"character head: width {d} does not split into {self.heads} attention heads")
        norm_shapes = [tuple(a.shape) for a in self.norm]
        if norm_shapes != [(d,), (d,)]:
            raise BundleError(f"character head: final norm shapes {norm_shapes}, expected two of ({d},)")
        for i, blk in enumerate(self.blocks):
            if set(blk) != set(BLOCK_SHAPES):
                raise BundleError(f"character head block {i}: arrays {sorted(blk)}, expected {sorted(BLOCK_SHAPES)}")
            for name, (rows, cols) in BLOCK_SHAPES.items():
                want = (d * cols,) if rows == 0 else (d * rows, d * cols)
                if blk[name].shape != want:
                    raise BundleError(f"character head block {i} {name}: shape {blk[name].shape}, expected {want}")

    @property
    def hidden(self) -> int:
        """The width of the audio embeddings it reads."""
        return self.weights[0].shape[0] // (2 * self.context + 1)

    def log_probs(self, embeds: np.ndarray) -> np.ndarray:
        """(T, H) audio embeddings -> (upsample*T, 1 + L) float64 log-probabilities, blank first."""
        n, c = len(embeds), self.context
        if n == 0:
            return np.zeros((0, 1 + len(ALPHABET)))
        padded = np.pad(np.asarray(embeds, dtype=np.float32), ((c, c), (0, 0)))  # (T, H) -> (T + 2c, H)
        x = np.concatenate([padded[i : i + n] for i in range(2 * c + 1)], axis=1)  # -> (T, (2c+1)H)
        x = gelu(gelu(x @ self.weights[0] + self.biases[0]) @ self.weights[1] + self.biases[1])  # -> (T, D)
        bias = alibi_bias(n, self.heads) if self.blocks else None
        for blk in self.blocks:
            x = block(x, blk, self.heads, bias)
        if self.norm:
            x = layer_norm(x, *self.norm)
        x = x @ self.weights[2] + self.biases[2]  # (T, D) -> (T, k(1+L))
        return log_softmax(x.reshape(n * self.upsample, -1))  # (T, k(1+L)) -> (kT, 1+L)

    def save(self, path: Path) -> None:
        """float16 arrays. With blocks, the output linear is ``out_w``/``out_b``, not ``w2``/``b2``: a reader
        that knows no blocks then fails on the file instead of skipping them."""
        out = ("out_w", "out_b") if self.blocks else ("w2", "b2")
        arrays = {f"w{i}": w.astype(np.float16) for i, w in enumerate(self.weights[:2])}
        arrays |= {f"b{i}": b.astype(np.float16) for i, b in enumerate(self.biases[:2])}
        arrays |= {out[0]: self.weights[2].astype(np.float16), out[1]: self.biases[2].astype(np.float16)}
        arrays |= {f"block{i}_{k}": a.astype(np.float16) for i, blk in enumerate(self.blocks) for k, a in blk.items()}
        arrays |= {f"norm_{k}": a.astype(np.float16) for k, a in zip("wb", self.norm, strict=False)}
        with open(path, "wb") as f:
            np.savez(f, **arrays, context=np.int64(self.context), upsample=np.int64(self.upsample),
                     alphabet=np.array(self.alphabet), blocks=np.int64(len(self.blocks)),
                     heads=np.int64(self.heads))  # fmt: skip


def _read_head(data) -> CharHead:
    def f32(key: str) -> np.ndarray:
        return np.asarray(data[key], dtype=np.float32)

    n_blocks = int(data["blocks"]) if "blocks" in data else 0  # the first shipped head predates blocks
    if n_blocks < 0:
        raise ValueError(f"blocks={n_blocks}")
    out = ("out_w", "out_b") if n_blocks else ("w2", "b2")
    return CharHead(
        weights=(f32("w0"), f32("w1"), f32(out[0])),
        biases=(f32("b0"), f32("b1"), f32(out[1])),
        context=int(data["context"]),
        upsample=int(data["upsample"]),
        alphabet=str(data["alphabet"]),
        blocks=tuple({k: f32(f"block{i}_{k}") for k in BLOCK_SHAPES} for i in range(n_blocks)),
        heads=int(data["heads"]) if "heads" in data else 0,
        norm=(f32("norm_w"), f32("norm_b")) if n_blocks else (),
    )


def load_char_head(path: Path, hidden: int | None = None) -> CharHead:
    """A character head from its npz, checked (and against the decoder's width ``hidden``, if given)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            head = _read_head(data)
    except (OSError, KeyError, ValueError, TypeError, zipfile.BadZipFile, BundleError) as exc:
        raise BundleError(f"cannot read the character head {path}: {exc}") from exc
    if hidden is not None and head.weights[0].shape[0] != (2 * head.context + 1) * hidden:
        raise BundleError(f"{path}: the character head reads {head.hidden}-wide embeddings; the decoder's are {hidden}")
    return head


def copy_char_head(src: Path, dst: Path, hidden: int) -> Path:
    """Copy a character head file after checking it reads ``hidden``-wide embeddings (written whole or not at all)."""
    load_char_head(src, hidden)
    return atomic_file(dst, lambda tmp: shutil.copyfile(src, tmp))

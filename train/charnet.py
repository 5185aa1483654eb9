"""The character head's network in PyTorch, for training: the same function as ``runtime/charnet.py``'s numpy
``CharHead`` (windows -> two GELU linears -> optional ALiBi transformer blocks -> LayerNorm -> output linear),
batched over padded clips; ``to_char_head`` hands its weights to the numpy head."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from falcon_audio_edge.runtime.charnet import ALPHABET, BLOCK_SHAPES, CharHead, alibi_bias, load_char_head


def as_array(t: torch.Tensor) -> np.ndarray:
    """A parameter as the numpy head stores it: matrices as (in, out), vectors as they are."""
    t = t.detach()
    return (t.T if t.ndim == 2 else t).cpu().numpy().copy()  # (out, in) -> (in, out)


class Block(nn.Module):
    """Pre-norm transformer block: bidirectional self-attention with an ALiBi bias, then a GELU MLP."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.ff1, self.ff2 = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        qkv = self.qkv(self.ln1(x)).reshape(b, t, 3, self.heads, d // self.heads)  # (B, T, 3D) -> (B, T, 3, h, D/h)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # -> 3 x (B, h, T, D/h)
        att = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B, h, T, D/h)
        x = x + self.drop(self.proj(att.transpose(1, 2).reshape(b, t, d)))  # (B, h, T, D/h) -> (B, T, D)
        return x + self.drop(self.ff2(nn.functional.gelu(self.ff1(self.ln2(x)), approximate="tanh")))

    def arrays(self) -> dict[str, np.ndarray]:
        """This block's weights under runtime/charnet.py's names, matrices as (in, out)."""
        parts = {name: name.rsplit("_", 1) for name in BLOCK_SHAPES}  # "qkv_w" -> self.qkv.weight
        return {
            name: as_array(getattr(getattr(self, m), "weight" if k == "w" else "bias"))
            for name, (m, k) in parts.items()
        }


class HeadNet(nn.Module):
    def __init__(self, hidden: int, context: int, width: int, upsample: int, blocks: int, heads: int, dropout: float):
        super().__init__()
        self.context, self.upsample, self.heads = context, upsample, heads
        self.front = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(hidden * (2 * context + 1), width), nn.GELU(approximate="tanh"),
            nn.Dropout(dropout), nn.Linear(width, width), nn.GELU(approximate="tanh"),
        )  # fmt: skip
        self.blocks = nn.ModuleList(Block(width, heads, dropout) for _ in range(blocks))
        self.norm = nn.LayerNorm(width) if blocks else None
        self.out = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, upsample * (1 + len(ALPHABET))))

    def windows(self, embeds: torch.Tensor) -> torch.Tensor:
        """(T, H) -> (T, (2c+1)H): each frame with its c neighbours each side (zeros past the ends)."""
        n, c = embeds.shape[0], self.context
        padded = nn.functional.pad(embeds, (0, 0, c, c))  # (T, H) -> (T + 2c, H)
        return torch.cat([padded[i : i + n] for i in range(2 * c + 1)], dim=1)

    def forward(self, clips: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Clips of (T_i, H) embeddings -> ((upsample*T, B, 1 + L) log-probabilities, padded; (B,) lengths)."""
        lengths = torch.tensor([len(c) for c in clips])
        width = int(lengths.max())
        x = torch.stack([nn.functional.pad(self.windows(c), (0, 0, 0, width - len(c))) for c in clips])  # (B, T, W)
        x = self.front(x)
        if self.blocks:
            keys = torch.arange(width)[None, :] < lengths[:, None]  # (B, T): real frames, not padding
            bias = torch.from_numpy(alibi_bias(width, self.heads))[None]  # (1, h, T, T)
            bias = bias.masked_fill(~keys[:, None, None, :], float("-inf")).to(x.device)  # (B, h, T, T)
            for blk in self.blocks:
                x = blk(x, bias)
            x = self.norm(x)
        x = self.out(x)  # (B, T, k(1+L))
        logp = x.reshape(len(clips), width * self.upsample, -1).log_softmax(-1)  # (B, T, k(1+L)) -> (B, kT, 1+L)
        return logp.transpose(0, 1), lengths * self.upsample  # (B, kT, C) -> (kT, B, C)


def char_ctc_loss(net: HeadNet, clips: list[torch.Tensor], labels: list[list[int]]) -> torch.Tensor:
    """Mean CTC loss of the head's reading of clips ((T_i, H) embeddings each) against their character labels."""
    logp, lengths = net(clips)  # (kT, B, C), (B,)
    targets = torch.tensor([label for row in labels for label in row], device=logp.device)
    return nn.functional.ctc_loss(
        logp.float(), targets, lengths, torch.tensor([len(row) for row in labels]), zero_infinity=True
    )


def start_head(path: Path, hidden: int) -> HeadNet:
    """The head to train on with the encoder: ``path`` (a checkpoint's char_head.npz) if there is one, else a
    fresh one of ``train/charhead.py``'s default shape."""
    if path.is_file():
        return from_char_head(load_char_head(path, hidden))
    from falcon_audio_edge.train.charhead import CharHeadConfig, head_module

    return head_module(hidden, CharHeadConfig())


def from_char_head(head: CharHead, dropout: float = 0.0) -> HeadNet:
    """A numpy head's weights (checked by ``CharHead`` itself) in a trainable network: ``to_char_head`` undone.
    Every array lands on a parameter of the same shape (``load_state_dict`` is strict)."""
    hidden = head.weights[0].shape[0] // (2 * head.context + 1)
    width = head.weights[0].shape[1]
    net = HeadNet(hidden, head.context, width, head.upsample, len(head.blocks), head.heads or 1, dropout)
    arrays = {"front.1": (head.weights[0], head.biases[0]), "front.4": (head.weights[1], head.biases[1]),
              "out.1": (head.weights[2], head.biases[2])}  # fmt: skip
    state = {f"{m}.{k}": torch.from_numpy(np.ascontiguousarray(a.T if a.ndim == 2 else a))
             for m, (w, b) in arrays.items() for k, a in (("weight", w), ("bias", b))}  # fmt: skip
    for i, blk in enumerate(head.blocks):
        for name, a in blk.items():
            m, k = name.rsplit("_", 1)
            state[f"blocks.{i}.{m}.{'weight' if k == 'w' else 'bias'}"] = torch.from_numpy(a.T if a.ndim == 2 else a)
    if head.blocks:
        state |= {"norm.weight": torch.from_numpy(head.norm[0]), "norm.bias": torch.from_numpy(head.norm[1])}
    net.load_state_dict({k: v.float() for k, v in state.items()})
    return net


def to_char_head(net: HeadNet) -> CharHead:
    linears = [net.front[1], net.front[4], net.out[1]]
    return CharHead(
        weights=tuple(as_array(m.weight) for m in linears),
        biases=tuple(as_array(m.bias) for m in linears),
        context=net.context,
        upsample=net.upsample,
        blocks=tuple(blk.arrays() for blk in net.blocks),
        heads=net.heads if net.blocks else 0,
        norm=(as_array(net.norm.weight), as_array(net.norm.bias)) if net.blocks else (),
    )

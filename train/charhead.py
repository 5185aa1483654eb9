"""Train a checkpoint's character CTC head (``runtime/charnet.py``) on its frozen audio embeddings.

    python -m falcon_audio_edge.train.charhead CHECKPOINT --train DATA/train/manifest.jsonl [--train ...]
        --eval DATA/dev/manifest.jsonl --steps 3000

The encoder and connector do not change: the clips are encoded once, then the head alone trains (CTC on the
characters of each row's spoken text; AdamW, linear warm-up, cosine decay), with a greedy character WER on
the eval manifest every ``eval_every`` steps. The head is written into the checkpoint folder as
``char_head.npz``, where ``fa-edge export`` picks it up for the bundle.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from falcon_audio_edge.errors import ConfigError, FaEdgeError
from falcon_audio_edge.files import atomic_file
from falcon_audio_edge.runtime.charnet import ALPHABET, CHAR_HEAD_FILE, CharHead
from falcon_audio_edge.runtime.chars import transcript_labels


@dataclass(frozen=True)
class CharHeadConfig:
    steps: int = 3000
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_steps: int = 150
    weight_decay: float = 0.01
    context: int = 2  # audio embeddings each side the head sees
    width: int = 512
    upsample: int = 2  # output frames per audio embedding
    blocks: int = 0  # transformer blocks over the whole clip after the MLP front (runtime/charnet.py)
    heads: int = 4  # their attention heads
    dropout: float = 0.0  # on the head's input and hidden layers, in training
    stretch: float = 0.0  # each training clip's embeddings resampled in time by a factor in [1 - s, 1 + s]
    time_mask: float = 0.0  # each training clip gets about this share of its frames zeroed, in spans of <= 3
    eval_every: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "width", "upsample", "eval_every", "heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("warmup_steps", "context", "seed", "blocks"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
        if self.blocks and self.width % self.heads:
            raise ConfigError(f"width={self.width} must be a multiple of heads={self.heads}")
        if self.warmup_steps >= self.steps:
            raise ConfigError(f"warmup_steps={self.warmup_steps} must be below steps={self.steps}")
        if not 0 < self.learning_rate < 1:
            raise ConfigError(f"learning_rate must be in (0, 1), got {self.learning_rate!r}")
        for name in ("dropout", "time_mask"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if not 0 <= self.stretch < 0.5:
            raise ConfigError(f"stretch must be in [0, 0.5), got {self.stretch!r}")
        if not 0 <= self.weight_decay < 1:
            raise ConfigError(f"weight_decay must be in [0, 1), got {self.weight_decay!r}")


@dataclass
class Clip:
    embeds: np.ndarray  # (T, H) float32
    labels: list[int]
    text: str


def encode_clips(ckpt, manifests: list[Path]) -> list[Clip]:
    """Each row with spoken text, as the checkpoint's audio embeddings (computed once: they stay frozen)."""
    import torch
    from falcon_audio_edge.train.data import read_manifest

    clips = []
    with torch.no_grad():
        for path in manifests:
            for ex in read_manifest(path, ckpt.dims):
                labels = transcript_labels(ex.transcript or "")
                if not labels:
                    continue
                audio = ckpt.model.encode_windows(ex.mels, ex.window_tokens)
                clips.append(Clip(audio.float().numpy(), labels, ex.transcript))
    if not clips:
        raise ConfigError(f"no rows with spoken text in {', '.join(map(str, manifests))}")
    return clips


def head_module(hidden: int, cfg: CharHeadConfig):
    from falcon_audio_edge.train.charnet import HeadNet

    return HeadNet(hidden, cfg.context, cfg.width, cfg.upsample, cfg.blocks, cfg.heads, cfg.dropout)


def head_log_probs(net, embeds):
    """(T, H) -> (upsample*T, 1 + L), as runtime/charnet.CharHead computes it."""
    return net([embeds])[0][:, 0]  # (kT, 1, C) -> (kT, C)


def greedy_text(log_probs: np.ndarray) -> str:
    """Best path, repeats merged, blanks dropped (the trainer's ``ctc_collapse``, which shifts label i to i - 1)."""
    from falcon_audio_edge.train.trainer import ctc_collapse

    return "".join(ALPHABET[i] for i in ctc_collapse(log_probs.argmax(axis=1).tolist()))


def char_wer(head: CharHead, clips: list[Clip]) -> float:
    from falcon_audio_edge.verify import word_error_rate

    hyps = [greedy_text(head.log_probs(c.embeds)) for c in clips]
    return word_error_rate([c.text for c in clips], hyps)


def ctc_frames(labels: list[int]) -> int:
    """The fewest frames CTC can read ``labels`` from: one each, and a blank between two equal neighbours."""
    return len(labels) + sum(a == b for a, b in zip(labels, labels[1:], strict=False))


def augmented(embeds: np.ndarray, labels: list[int], cfg: CharHeadConfig, rng: np.random.Generator) -> np.ndarray:
    """A training clip's embeddings, stretched in time (linear interpolation between neighbours) and with
    spans of frames zeroed; never stretched shorter than CTC needs for its labels (or than it was)."""
    n = len(embeds)
    if cfg.stretch:
        need = -(-ctc_frames(labels) // cfg.upsample)  # ceil: each embedding gives upsample frames
        m = max(round(n * rng.uniform(1 - cfg.stretch, 1 + cfg.stretch)), min(need, n), 1)
        pos = np.linspace(0, n - 1, m)  # the new frames' positions on the old time axis
        lo = np.floor(pos).astype(int)
        hi, frac = np.minimum(lo + 1, n - 1), (pos - lo)[:, None].astype(np.float32)
        embeds = embeds[lo] * (1 - frac) + embeds[hi] * frac  # (T, H) -> (m, H)
    if cfg.time_mask:
        embeds = embeds.copy()
        for start in rng.integers(0, len(embeds), rng.poisson(cfg.time_mask * len(embeds) / 2)):
            embeds[start : start + rng.integers(1, 4)] = 0.0
    return embeds


def batch_loss(net, batch: list[Clip], cfg: CharHeadConfig, rng: np.random.Generator):
    import torch
    from falcon_audio_edge.train.charnet import char_ctc_loss

    feats = [augmented(c.embeds, c.labels, cfg, rng) for c in batch]  # as they are, and no draws, without augmentation
    return char_ctc_loss(net, [torch.from_numpy(np.ascontiguousarray(x)) for x in feats], [c.labels for c in batch])


def train_head(train: list[Clip], dev: list[Clip], hidden: int, cfg: CharHeadConfig, log=print) -> CharHead:
    import torch
    from falcon_audio_edge.train.charnet import to_char_head

    torch.manual_seed(cfg.seed)
    net = head_module(hidden, cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)

    def scale(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        return 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup_steps) / (cfg.steps - cfg.warmup_steps)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, scale)
    rng, t0 = np.random.default_rng(cfg.seed), time.perf_counter()
    for step in range(1, cfg.steps + 1):
        batch = [train[i] for i in rng.integers(0, len(train), cfg.batch_size)]
        loss = batch_loss(net, batch, cfg, rng)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % cfg.eval_every == 0 or step == cfg.steps:
            wer = char_wer(to_char_head(net), dev) if dev else float("nan")
            log(f"step {step}/{cfg.steps}: loss {loss.item():.3f}, eval greedy character WER {wer:.3f}, "
                f"{time.perf_counter() - t0:.0f} s")  # fmt: skip
    return to_char_head(net)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--train", type=Path, action="append", required=True, help="a training manifest (repeatable)")
    parser.add_argument("--eval", type=Path, default=None, help="a manifest for the periodic greedy WER")
    for name, value in CharHeadConfig().__dict__.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args(argv)
    try:
        from falcon_audio_edge.checkpoint import load_checkpoint

        cfg = CharHeadConfig(**{k: getattr(args, k) for k in CharHeadConfig().__dict__})
        ckpt = load_checkpoint(args.checkpoint)
        train = encode_clips(ckpt, args.train)
        dev = encode_clips(ckpt, [args.eval]) if args.eval else []
        print(f"{len(train)} training clips, {len(dev)} eval clips", flush=True)
        head = train_head(train, dev, ckpt.dims.decoder.hidden, cfg, log=lambda m: print(m, flush=True))
        out = atomic_file(args.checkpoint / CHAR_HEAD_FILE, head.save)
    except FaEdgeError as exc:
        parser.exit(2, f"error: {exc}\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])

"""Train a checkpoint's character CTC head (``runtime/chars.py``) on its frozen audio embeddings.

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
from falcon_audio_edge.runtime.chars import ALPHABET, CHAR_HEAD_FILE, CharHead, transcript_labels


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
    dropout: float = 0.0  # on the head's input and hidden layers, in training
    eval_every: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "width", "upsample", "eval_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("warmup_steps", "context", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
        if self.warmup_steps >= self.steps:
            raise ConfigError(f"warmup_steps={self.warmup_steps} must be below steps={self.steps}")
        if not 0 < self.learning_rate < 1:
            raise ConfigError(f"learning_rate must be in (0, 1), got {self.learning_rate!r}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")
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
                audio = ckpt.model.encode_audio(torch.from_numpy(ex.mel)[None])[0, : ex.n_audio_tokens]
                clips.append(Clip(audio.float().numpy(), labels, ex.transcript))
    if not clips:
        raise ConfigError(f"no rows with spoken text in {', '.join(map(str, manifests))}")
    return clips


def head_module(hidden: int, cfg: CharHeadConfig):
    import torch.nn as nn

    n_out, p = cfg.upsample * (1 + len(ALPHABET)), cfg.dropout
    return nn.Sequential(
        nn.Dropout(p), nn.Linear(hidden * (2 * cfg.context + 1), cfg.width), nn.GELU(approximate="tanh"),
        nn.Dropout(p), nn.Linear(cfg.width, cfg.width), nn.GELU(approximate="tanh"),
        nn.Dropout(p), nn.Linear(cfg.width, n_out),
    )  # fmt: skip


def head_log_probs(net, embeds, cfg: CharHeadConfig):
    """(T, H) -> (upsample*T, 1 + L), as runtime/chars.CharHead computes it."""
    import torch

    n, c = embeds.shape[0], cfg.context
    padded = torch.nn.functional.pad(embeds, (0, 0, c, c))  # (T, H) -> (T + 2c, H)
    x = torch.cat([padded[i : i + n] for i in range(2 * c + 1)], dim=1)  # -> (T, (2c+1)H)
    return net(x).reshape(n * cfg.upsample, -1).log_softmax(-1)  # (T, k(1+L)) -> (kT, 1+L)


def to_char_head(net, cfg: CharHeadConfig) -> CharHead:
    linears = [m for m in net if hasattr(m, "weight")]  # the three linears (dropout has no weights)
    return CharHead(
        weights=tuple(m.weight.detach().numpy().T.copy() for m in linears),  # (out, in) -> (in, out)
        biases=tuple(m.bias.detach().numpy().copy() for m in linears),
        context=cfg.context,
        upsample=cfg.upsample,
    )


def greedy_text(log_probs: np.ndarray) -> str:
    """Best path, repeats merged, blanks dropped (the trainer's ``ctc_collapse``, which shifts label i to i - 1)."""
    from falcon_audio_edge.train.trainer import ctc_collapse

    return "".join(ALPHABET[i] for i in ctc_collapse(log_probs.argmax(axis=1).tolist()))


def char_wer(head: CharHead, clips: list[Clip]) -> float:
    from falcon_audio_edge.verify import word_error_rate

    hyps = [greedy_text(head.log_probs(c.embeds)) for c in clips]
    return word_error_rate([c.text for c in clips], hyps)


def batch_loss(net, batch: list[Clip], cfg: CharHeadConfig):
    import torch

    logp = [head_log_probs(net, torch.from_numpy(c.embeds), cfg) for c in batch]
    width = max(x.shape[0] for x in logp)
    padded = logp[0].new_zeros(width, len(batch), logp[0].shape[1])
    for j, x in enumerate(logp):
        padded[: x.shape[0], j] = x  # (T_j, C) into (T, N, C)
    targets = torch.tensor([label for c in batch for label in c.labels])
    return torch.nn.functional.ctc_loss(
        padded, targets, torch.tensor([x.shape[0] for x in logp]), torch.tensor([len(c.labels) for c in batch]),
        zero_infinity=True,
    )  # fmt: skip


def train_head(train: list[Clip], dev: list[Clip], hidden: int, cfg: CharHeadConfig, log=print) -> CharHead:
    import torch

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
        loss = batch_loss(net, [train[i] for i in rng.integers(0, len(train), cfg.batch_size)], cfg)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % cfg.eval_every == 0 or step == cfg.steps:
            wer = char_wer(to_char_head(net, cfg), dev) if dev else float("nan")
            log(f"step {step}/{cfg.steps}: loss {loss.item():.3f}, eval greedy character WER {wer:.3f}, "
                f"{time.perf_counter() - t0:.0f} s")  # fmt: skip
    return to_char_head(net, cfg)


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

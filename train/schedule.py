"""The trainer's order of batches and its learning-rate schedule: the same on every run, so a resume replays them."""

from __future__ import annotations

import itertools
import math
import random

from falcon_audio_edge.train.config import TrainConfig
from falcon_audio_edge.train.data import Example
from falcon_audio_edge.train.state import BUCKET

from falcon_audio_edge.errors import ConfigError


def lr_lambda(cfg: TrainConfig):
    def scale(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return scale


def approx_length(ex: Example) -> int:
    """About how many positions an example takes in the LLM (audio + text at ~4 characters a token)."""
    return ex.n_audio_tokens + (len(ex.instruction or "") + len(ex.target)) // 4


def batches(lengths: list[int], cfg: TrainConfig, epoch: int) -> list[list[int]]:
    """One epoch's batches: shuffled, then sorted by length within buckets of BUCKET batches, so a batch holds
    examples of similar length and little of it is right padding; the batches are shuffled again. The same
    order on every run (for resume)."""
    rng = random.Random(cfg.seed * 1000 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    size, out = cfg.batch_size, []
    for start in range(0, len(order), size * BUCKET):
        chunk = sorted(order[start : start + size * BUCKET], key=lambda i: lengths[i])
        out += [chunk[i : i + size] for i in range(0, len(chunk) - size + 1, size)]
    rng.shuffle(out)
    return out


def micro_batches(lengths: list[int], cfg: TrainConfig, start: int):
    """Every micro-batch from ``start`` on, epoch after epoch, the same order on every run (for resume)."""
    per_epoch = len(batches(lengths, cfg, 0))
    if per_epoch == 0:
        raise ConfigError(f"batch_size={cfg.batch_size} is larger than the {len(lengths)} training examples")
    epoch, order = None, []
    for index in itertools.count(start):
        if index // per_epoch != epoch:  # one epoch's order, made once
            epoch = index // per_epoch
            order = batches(lengths, cfg, epoch)
        yield order[index % per_epoch]

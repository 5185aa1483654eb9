"""Run-time settings: dataclasses validated in one place. The CLI only builds them."""

from __future__ import annotations

import os
from dataclasses import dataclass

from falcon_audio_edge.errors import ConfigError


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


@dataclass(frozen=True)
class GenerationSettings:
    """How the answer is decoded: greedy when temperature is 0, sampled otherwise."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 40
    top_p: float = 0.95
    seed: int | None = None
    ignore_end_of_turn: bool = False  # generate exactly max_tokens (benchmarks)

    def __post_init__(self) -> None:
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if not 0.0 <= self.temperature <= 5.0:
            raise ConfigError(f"temperature must be between 0 and 5, got {self.temperature!r}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0 (0 = off), got {self.top_k!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class RuntimeSettings:
    """How the bundle runs: threads for the encoder and the decoder, context size."""

    threads: int = 0  # 0: all cores this process may use
    n_ctx: int = 4096
    n_batch: int = 512
    verify_checksums: bool = True

    def __post_init__(self) -> None:
        if self.threads < 0:
            raise ConfigError(f"threads must be >= 0 (0 = all cores), got {self.threads!r}")
        if self.n_ctx < 64:
            raise ConfigError(f"n_ctx must be >= 64, got {self.n_ctx!r}")
        if self.n_batch < 1:
            raise ConfigError(f"n_batch must be >= 1, got {self.n_batch!r}")

    @property
    def n_threads(self) -> int:
        return self.threads or default_threads()

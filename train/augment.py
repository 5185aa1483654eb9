"""SpecAugment for training (Park et al., 2019): random frequency bands and time spans of the log-mel masked.

A listener that cannot lean on one band or one instant has to use the rest, which is what an unseen voice or
accent asks of it (its formants sit elsewhere). Applied to the spoken part of each clip only, never at eval or
run time. Masks take the clip's mean level, so a mask reads as flat spectrum rather than as silence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SpecAugment:
    freq_masks: int = 0  # bands per clip
    freq_width: int = 15  # each band: 0 to this many mel bins
    time_masks: int = 0  # spans per clip
    time_width: int = 10  # each span: 0 to this many mel frames (10 ms each)

    @property
    def active(self) -> bool:
        return self.freq_masks > 0 or self.time_masks > 0

    def __call__(self, mel: torch.Tensor, frames: int, gen: torch.Generator) -> torch.Tensor:
        """A masked copy of ``mel`` (n_mels, T); only the first ``frames`` columns (the clip) are touched."""
        n_mels, total = mel.shape
        frames = max(1, min(frames, total))
        out = mel.clone()
        fill = mel[:, :frames].mean()
        for _ in range(self.freq_masks):
            lo, hi = _span(min(self.freq_width, n_mels), n_mels, gen)
            out[lo:hi, :frames] = fill
        for _ in range(self.time_masks):
            lo, hi = _span(min(self.time_width, frames), frames, gen)
            out[:, lo:hi] = fill
        return out


def _span(width: int, size: int, gen: torch.Generator) -> tuple[int, int]:
    """A random [lo, hi) of 0..width items inside 0..size."""
    n = int(torch.randint(0, width + 1, (), generator=gen))
    lo = int(torch.randint(0, size - n + 1, (), generator=gen))
    return lo, lo + n

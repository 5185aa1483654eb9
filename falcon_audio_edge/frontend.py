"""From samples to audio embeddings, the same way for the runtime and the PyTorch reference.

Audio is cut into the model's encoder windows (``dims.audio.window_ms``: 30 s, Whisper's own, unless the model was
trained with shorter ones); each is encoded on its own and the embeddings are concatenated. With ``pad_to_30s``
each window's mel is padded to 3000 frames (Whisper's training input) and the embeddings are trimmed back to the
clip's own length, so the number of audio tokens always follows the clip.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from falcon_audio_edge.audio import SAMPLE_RATE, log_mel_spectrogram, split_windows, validate_samples
from falcon_audio_edge.config import ModelDims


@dataclass(frozen=True)
class AudioFeatures:
    """Log-mel windows of one clip and how many audio tokens each keeps."""

    mels: list[np.ndarray]  # one (n_mels, T) float32 array per window
    tokens: list[int]  # audio tokens kept from each window
    seconds: float

    @property
    def windows(self) -> int:
        return len(self.mels)

    @property
    def n_tokens(self) -> int:
        return sum(self.tokens)


def audio_features(samples: np.ndarray, dims: ModelDims, source: str = "audio") -> AudioFeatures:
    samples = validate_samples(samples, source)
    mels, tokens = [], []
    for window in split_windows(samples, window_samples(dims)):
        frames = len(window) // (SAMPLE_RATE // 100)
        if frames < 2:  # a tail too short to encode (under 20 ms) carries nothing
            continue
        mels.append(log_mel_spectrogram(window, dims.encoder.n_mels, pad_to_30s=dims.audio.pad_to_30s))
        tokens.append(dims.n_audio_tokens(frames))
    return AudioFeatures(mels=mels, tokens=tokens, seconds=len(samples) / SAMPLE_RATE)


def window_samples(dims: ModelDims) -> int:
    """Samples in one of the model's encoder windows."""
    return dims.audio.window_ms * SAMPLE_RATE // 1000


def encode_features(features: AudioFeatures, encode: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Run ``encode`` (mel (n_mels, T) -> (tokens, H)) per window: (N, H) float32 for the whole clip."""
    parts = []
    for mel, keep in zip(features.mels, features.tokens, strict=True):
        out = encode(mel)
        if out.shape[0] < keep:
            raise RuntimeError(f"encoder returned {out.shape[0]} audio tokens, expected at least {keep}")
        parts.append(out[:keep])
    return np.concatenate(parts, axis=0).astype(np.float32)

"""Benchmark clips: real speech of any length, made by repeating the packaged question WAV."""

from __future__ import annotations

from importlib import resources

import numpy as np

from falcon_audio_edge.audio import CHUNK_LENGTH, SAMPLE_RATE, Audio, load_audio
from falcon_audio_edge.errors import ConfigError

GAP_SECONDS = 0.3


def question_audio() -> Audio:
    return load_audio(resources.files("falcon_audio_edge") / "data" / "question.wav")


def speech_clip(seconds: float) -> Audio:
    """``seconds`` of speech: the packaged question over and over, 0.3 s apart, cut to length."""
    if not 0 < seconds <= CHUNK_LENGTH:
        raise ConfigError(f"clip length must be in (0, {CHUNK_LENGTH}] s (one model window), got {seconds}")
    question = question_audio().samples
    piece = np.concatenate([question, np.zeros(int(GAP_SECONDS * SAMPLE_RATE), dtype=np.float32)])
    n = int(round(seconds * SAMPLE_RATE))
    samples = np.resize(piece, n).astype(np.float32)  # repeats the piece, then cuts
    return Audio(samples=samples, source=f"speech-{seconds:g}s")

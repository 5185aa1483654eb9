"""Rooms and microphones: what happens to a voice between a person's mouth and a laptop's sound card.

A speech engine writes studio audio; people talk to a laptop from an arm's length in a room, over a fan, through a
small microphone. Each clip gets, at random: a speed change (resampled, so pitch and vocal-tract length move with
it, as Kaldi's speed perturbation), a room (an exponentially decaying impulse response of 0.15-0.7 s RT60 with a
direct path and early reflections), background noise at 10-40 dB SNR (white, pink, brown or mains hum), a
microphone's band (laptop: high-pass and low-pass; telephone: 300-3400 Hz through 8 kHz G.711 mu-law, a lossy
codec) and a level. numpy and soxr only; every draw comes from the ``random.Random`` given, so a seed rebuilds a
split exactly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import soxr

from falcon_audio_edge.audio import SAMPLE_RATE

SPEED = (0.92, 1.08)
RT60 = (0.15, 0.7)  # seconds: a furnished room to a bare one
SNR_DB = (10.0, 40.0)
NOISES = ("white", "pink", "brown", "hum")
LEVEL = (0.05, 0.9)  # peak after everything: a quiet to a loud microphone


@dataclass(frozen=True)
class RoomSettings:
    """The chance of each effect (0 turns it off)."""

    speed: float = 0.6
    room: float = 0.5
    noise: float = 0.6
    band: float = 0.5
    telephone: float = 0.1  # of the band-limited clips, the share that goes through a telephone line

    def validate(self) -> None:
        for name in ("speed", "room", "noise", "band", "telephone"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"rooms.{name} must be a probability from 0 to 1, got {value!r}")


def change_speed(x: np.ndarray, factor: float) -> np.ndarray:
    """Played ``factor`` times faster: resampled, so pitch and formants move with the tempo."""
    return soxr.resample(x, SAMPLE_RATE * factor, SAMPLE_RATE).astype(np.float32)


def impulse_response(rng: np.random.Generator, rt60: float) -> np.ndarray:
    """A room: a direct path, a few early reflections, then noise decaying by 60 dB over ``rt60`` seconds."""
    n = int(rt60 * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    tail = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)  # ln(1000) = 6.9: -60 dB at rt60
    tail[: int(0.004 * SAMPLE_RATE)] = 0.0  # the first reflection arrives after ~1.3 m of path
    for _ in range(4):
        at = int(rng.uniform(0.003, 0.03) * SAMPLE_RATE)
        tail[at] += rng.uniform(0.3, 0.8) * rng.choice((-1.0, 1.0))
    ir = tail * rng.uniform(0.1, 0.4) / (np.abs(tail).max() + 1e-9)
    ir[0] = 1.0
    return ir.astype(np.float32)


def convolve(x: np.ndarray, ir: np.ndarray) -> np.ndarray:
    size = len(x) + len(ir) - 1
    n = 1 << (size - 1).bit_length()
    y = np.fft.irfft(np.fft.rfft(x, n) * np.fft.rfft(ir, n), n)[: len(x)]
    return y.astype(np.float32)


def coloured_noise(rng: np.random.Generator, kind: str, n: int) -> np.ndarray:
    """Unit-RMS noise: white, pink (1/f power), brown (1/f^2) or mains hum (50 or 60 Hz and harmonics)."""
    if kind == "hum":
        base = rng.choice((50.0, 60.0))
        t = np.arange(n) / SAMPLE_RATE
        noise = sum(
            rng.uniform(0.2, 1.0) / h * np.sin(2 * np.pi * base * h * t + rng.uniform(0, 6.3)) for h in range(1, 6)
        )
        noise = noise + 0.05 * rng.standard_normal(n)
    else:
        spectrum = np.fft.rfft(rng.standard_normal(n))
        freqs = np.maximum(np.fft.rfftfreq(n, 1 / SAMPLE_RATE), 20.0)
        power = {"white": 0.0, "pink": 1.0, "brown": 2.0}[kind]
        noise = np.fft.irfft(spectrum / freqs ** (power / 2), n)
    return (noise / (np.sqrt(np.mean(noise**2)) + 1e-12)).astype(np.float32)


def band_pass(x: np.ndarray, low: float, high: float) -> np.ndarray:
    """A smooth-edged band (raised-cosine roll-offs a third of an octave wide) applied in the frequency domain."""
    n = len(x)
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    gain = np.ones_like(freqs)
    for edge, rising in ((low, True), (high, False)):
        lo, hi = edge / 2 ** (1 / 6), edge * 2 ** (1 / 6)
        ramp = np.clip((np.log(np.maximum(freqs, 1.0)) - np.log(lo)) / (np.log(hi) - np.log(lo)), 0, 1)
        shape = 0.5 - 0.5 * np.cos(np.pi * ramp)
        gain *= shape if rising else 1.0 - shape
    return np.fft.irfft(np.fft.rfft(x) * gain, n).astype(np.float32)


def telephone(x: np.ndarray) -> np.ndarray:
    """300-3400 Hz, 8 kHz, 8-bit mu-law (G.711) and back: a lossy codec."""
    narrow = soxr.resample(band_pass(x, 300.0, 3400.0), SAMPLE_RATE, 8000)
    peak = float(np.abs(narrow).max()) or 1.0
    y = np.clip(narrow / peak, -1, 1)
    mu = 255.0
    coded = np.round((np.sign(y) * np.log1p(mu * np.abs(y)) / np.log1p(mu) + 1) * 127.5)  # 8 bits
    decoded = coded / 127.5 - 1
    y = np.sign(decoded) * ((1 + mu) ** np.abs(decoded) - 1) / mu * peak
    return soxr.resample(y, 8000, SAMPLE_RATE).astype(np.float32)[: len(x)]


def apply(x: np.ndarray, rng: random.Random, settings: RoomSettings = RoomSettings()) -> tuple[np.ndarray, dict]:
    """One clip through a random room and microphone; returns the audio and what was done (for the manifest)."""
    gen = np.random.default_rng(rng.randrange(2**32))
    done: dict = {}
    if rng.random() < settings.speed:
        done["speed"] = round(rng.uniform(*SPEED), 3)
        x = change_speed(x, done["speed"])
    if rng.random() < settings.room:
        done["rt60"] = round(rng.uniform(*RT60), 2)
        x = convolve(x, impulse_response(gen, done["rt60"]))
    if rng.random() < settings.band:
        if rng.random() < settings.telephone:
            done["band"] = "telephone"
            x = telephone(x)
        else:
            low, high = rng.uniform(80, 300), rng.uniform(3800, 7800)
            done["band"] = [round(low), round(high)]
            x = band_pass(x, low, high)
    if rng.random() < settings.noise:
        kind, snr = rng.choice(NOISES), rng.uniform(*SNR_DB)
        done["noise"], done["snr_db"] = kind, round(snr, 1)
        power = float(np.mean(x**2)) or 1e-8
        x = x + coloured_noise(gen, kind, len(x)) * np.sqrt(power / 10 ** (snr / 10))
    peak = float(np.abs(x).max()) or 1.0
    return (x * rng.uniform(*LEVEL) / peak).astype(np.float32), done

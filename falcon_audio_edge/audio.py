"""The audio front-end: the one module that owns the audio constants.

Everything that needs the sample rate, the STFT sizes or the window length
imports them from here (as in openai/whisper ``audio.py``). The log-mel
spectrogram is computed in numpy and matches transformers'
``WhisperFeatureExtractor`` (tested against it), so the runtime needs neither
torch nor transformers.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from falcon_audio_edge.errors import AudioError

SAMPLE_RATE = 16000  # Hz: what Whisper was trained on
N_FFT = 400  # 25 ms window
HOP_LENGTH = 160  # 10 ms hop: 100 mel frames per second
CHUNK_LENGTH = 30  # seconds: Whisper's window
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480000 samples in a 30 s window
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames in a 30 s window
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100
MIN_SAMPLES = SAMPLE_RATE // 10  # 0.1 s: anything shorter is not speech
SILENCE_PEAK = 1e-4  # -80 dBFS: a clip whose peak is below this is silent
MIN_FILE_RATE, MAX_FILE_RATE = 8000, 192000  # Hz: the sample rates an audio file may have
MAX_AUDIO_SECONDS = 5 * 60  # the longest audio taken (10 windows of 30 s); longer is refused, not cut silently
MAX_FILE_CHANNELS = 8
# listen-first hears longer audio in pieces of at most this many seconds, each cut at a pause: about a spoken
# sentence, what the listening model was trained on (docs/architecture.md, "Long audio")
SEGMENT_SECONDS = 10.0
PHRASE_SECONDS = 2.0  # a piece ends at the first pause at least this far in (heard while the person goes on)
PAUSE_SECONDS = 0.2  # a pause: a stretch this long ...
PAUSE_DB = 25.0  # ... at least this much quieter than the piece's loudest stretch before it, or
ROOM_PAUSE_DB = 15.0  # ... this much quieter than it and
ROOM_DB = 10.0  # ... within this much of the piece's quietest stretch up to it (the room's own level)
MIN_TAIL_SECONDS = 1.0  # a cut leaves at least this much for the next piece


@dataclass(frozen=True)
class Audio:
    """Mono float32 samples at SAMPLE_RATE, with where they came from."""

    samples: np.ndarray
    source: str

    @property
    def seconds(self) -> float:
        return len(self.samples) / SAMPLE_RATE


def load_audio(path: str | Path) -> Audio:
    """Read an audio file as mono float32 at 16 kHz (downmix, resample), validated."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file not found: {path}")
    try:
        check_audio_header(sf.info(str(path)), str(path))
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except AudioError:
        raise
    except Exception as exc:  # soundfile raises several types for bad files
        raise AudioError(f"cannot read audio file {path}: {exc}") from exc
    samples = data.mean(axis=1)  # (n, channels) -> (n,): downmix to mono
    return Audio(validate_samples(resample(samples, rate), str(path)), str(path))


def check_audio_header(info, source: str) -> None:
    """Refuse, before anything is read, a file whose header claims a rate, channel count or length out of range
    (a 1 Hz rate would be resampled into gigabytes)."""
    if not MIN_FILE_RATE <= info.samplerate <= MAX_FILE_RATE:
        raise AudioError(f"{source}: sample rate {info.samplerate} Hz is outside {MIN_FILE_RATE}-{MAX_FILE_RATE} Hz")
    if not 1 <= info.channels <= MAX_FILE_CHANNELS:
        raise AudioError(f"{source}: {info.channels} channels; at most {MAX_FILE_CHANNELS} are taken")
    seconds = info.frames / info.samplerate
    if seconds > MAX_AUDIO_SECONDS:
        raise AudioError(f"{source}: {seconds:.0f} s of audio is over the {MAX_AUDIO_SECONDS // 60} min limit; "
                         "cut it into shorter clips")  # fmt: skip


def resample(samples: np.ndarray, rate: int) -> np.ndarray:
    """Resample mono samples from ``rate`` to SAMPLE_RATE (soxr, high quality)."""
    samples = np.asarray(samples, dtype=np.float32)
    if rate == SAMPLE_RATE or samples.size == 0:
        return samples
    import soxr

    return soxr.resample(samples, rate, SAMPLE_RATE, quality="HQ").astype(np.float32)


def validate_samples(samples: np.ndarray, source: str = "audio") -> np.ndarray:
    """Check that samples are usable speech input; raise AudioError naming the problem."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 1:
        raise AudioError(f"{source}: expected mono samples, got shape {samples.shape}")
    if samples.size == 0:
        raise AudioError(f"{source}: the audio is empty (0 samples)")
    if samples.size > MAX_AUDIO_SECONDS * SAMPLE_RATE:
        raise AudioError(f"{source}: {samples.size / SAMPLE_RATE:.0f} s of audio is over the "
                         f"{MAX_AUDIO_SECONDS // 60} min limit; cut it into shorter clips")  # fmt: skip
    if not np.all(np.isfinite(samples)):
        bad = int(np.count_nonzero(~np.isfinite(samples)))
        raise AudioError(f"{source}: the audio has {bad} NaN or infinite samples")
    if samples.size < MIN_SAMPLES:
        raise AudioError(
            f"{source}: the audio is {samples.size / SAMPLE_RATE:.3f} s long, "
            f"shorter than the minimum {MIN_SAMPLES / SAMPLE_RATE:.1f} s"
        )
    peak = float(np.max(np.abs(samples)))
    if peak < SILENCE_PEAK:
        raise AudioError(f"{source}: the audio is silent (peak {peak:.2e}), nothing to answer")
    return samples


def split_windows(samples: np.ndarray, window: int = N_SAMPLES) -> list[np.ndarray]:
    """Cut samples into encoder windows of at most ``window`` samples each (Whisper's 30 s unless the model was
    trained with shorter ones)."""
    return [samples[i : i + window] for i in range(0, len(samples), window)]


def pause_segments(samples: np.ndarray, max_seconds: float = SEGMENT_SECONDS) -> list[tuple[int, int]]:
    """(start, end) sample spans that cover ``samples`` in order: phrases, each ended by ``piece_end``. Each
    cut depends only on the audio from the piece's start, so an utterance cut as it arrives (``piece_end`` on
    what is there so far) gives the same pieces."""
    spans, start, n = [], 0, len(samples)
    while start < n:
        end = start + int(piece_end(samples[start:], True, max_seconds=max_seconds))
        spans.append((start, end))
        start = end
    return spans or [(0, 0)]


def piece_end(samples: np.ndarray, whole: bool, slack: int = 0, max_seconds: float = SEGMENT_SECONDS) -> int | None:
    """Where the piece that starts at ``samples[0]`` ends: at the middle of the first pause (a PAUSE_SECONDS
    stretch, ``is_pause``) at least PHRASE_SECONDS in; with no pause in ``max_seconds``,
    in the quietest stretch of its second half, so pieces stay bounded and the work stays in proportion to the
    audio. A cut leaves at least MIN_TAIL_SECONDS after it. ``whole``: ``samples`` is all the rest of the
    utterance (no cut: ``len(samples)``). Else more may come, and the utterance may end up to ``slack`` samples
    short of ``samples``: the cut once nothing still to come can move it, else None."""
    n, longest = len(samples), int(max_seconds * SAMPLE_RATE)
    if max_seconds < 3 * MIN_TAIL_SECONDS:  # half of it, less the tail, must leave a stretch to cut in
        raise ValueError(f"max_seconds must be at least {3 * MIN_TAIL_SECONDS:g} s, got {max_seconds}")
    room = n - int(MIN_TAIL_SECONDS * SAMPLE_RATE) - (0 if whole else slack)  # the last cut this audio allows
    quiet, valid = stretch_power(samples)
    lo, hi = int(PHRASE_SECONDS * FRAMES_PER_SECOND), min(min(longest, room) // HOP_LENGTH, valid)
    pauses = np.flatnonzero(is_pause(quiet[: max(hi, 0)])[lo:])
    if pauses.size:
        return (lo + int(pauses[0])) * HOP_LENGTH
    if room >= longest:  # no pause in the piece's longest span: the quietest stretch of its second half
        return _quietest(quiet, longest, longest)
    if not whole:  # a pause, or the end, may still come
        return None
    return n if n <= longest else _quietest(quiet, longest, room)


def cut_ahead(samples: np.ndarray, max_seconds: float = SEGMENT_SECONDS) -> int | None:
    """The cut ``piece_end`` will make in the piece that starts at ``samples[0]`` if the utterance goes on at least
    MIN_TAIL_SECONDS past it, as soon as the pause it is in is over (a stretch that is no pause follows it); None
    before. Every cut depends only on the audio up to just after it, so this one cannot move: a
    person who goes on after a pause makes this the piece, one who stops within the tail leaves it uncut."""
    quiet, valid = stretch_power(samples)
    lo, hi = int(PHRASE_SECONDS * FRAMES_PER_SECOND), min(int(max_seconds * SAMPLE_RATE) // HOP_LENGTH, valid)
    if hi <= lo:
        return None
    paused = is_pause(quiet[:hi])[lo:]
    pauses = np.flatnonzero(paused)
    if not pauses.size or paused[pauses[0] :].all():  # no pause yet, or still in it
        return None
    return (lo + int(pauses[0])) * HOP_LENGTH


def is_pause(quiet: np.ndarray) -> np.ndarray:
    """Which of a piece's stretches (``stretch_power``) are pauses: PAUSE_DB under the loudest up to it, or
    ROOM_PAUSE_DB under it where no stretch up to it is more than ROOM_DB quieter (a room whose noise is near the
    voice: where the room showed before, a pause must come down near its level; a dip inside a word seldom does).
    Each depends only on the stretches up to it."""
    loud, floor = np.maximum.accumulate(quiet), np.minimum.accumulate(quiet)
    near_floor = (quiet * 10 ** (ROOM_PAUSE_DB / 10) <= loud) & (quiet <= floor * 10 ** (ROOM_DB / 10))
    return (quiet * 10 ** (PAUSE_DB / 10) <= loud) | near_floor


def _quietest(quiet: np.ndarray, longest: int, room: int) -> int:
    lo, hi = (longest // 2) // HOP_LENGTH, room // HOP_LENGTH
    return (lo + int(np.argmin(quiet[lo:hi]))) * HOP_LENGTH


def stretch_power(samples: np.ndarray) -> tuple[np.ndarray, int]:
    """Mean power of the PAUSE_SECONDS stretch around each 10 ms frame, and how many frames have their whole
    stretch inside ``samples`` (those after it would change as more audio arrives)."""
    frames = len(samples) // HOP_LENGTH
    power = np.square(samples[: frames * HOP_LENGTH], dtype=np.float64)
    power = power.reshape(frames, HOP_LENGTH).mean(axis=1)  # (T,) -> (T/160, 160) -> (T/160,): 10 ms frames
    width = max(1, round(PAUSE_SECONDS * FRAMES_PER_SECOND))
    quiet = np.convolve(power, np.ones(width) / width, mode="same") if frames else power
    return quiet, max(0, frames - (width - width // 2) + 1)


def hz_to_mel(freq: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    freq = np.asarray(freq, dtype=np.float64)
    min_log_hz, min_log_mel, logstep = 1000.0, 15.0, 27.0 / np.log(6.4)
    mels = 3.0 * freq / 200.0
    log_part = min_log_mel + np.log(np.maximum(freq, min_log_hz) / min_log_hz) * logstep
    return np.where(freq >= min_log_hz, log_part, mels)


def mel_to_hz(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    min_log_hz, min_log_mel, logstep = 1000.0, 15.0, np.log(6.4) / 27.0
    freq = 200.0 * mels / 3.0
    log_part = min_log_hz * np.exp(logstep * (mels - min_log_mel))
    return np.where(mels >= min_log_mel, log_part, freq)


@lru_cache(maxsize=4)
def mel_filters(n_mels: int) -> np.ndarray:
    """Slaney-normalised triangular filters, (n_mels, N_FFT // 2 + 1), float32."""
    fft_freqs = np.linspace(0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    mel_points = np.linspace(hz_to_mel(0.0), hz_to_mel(SAMPLE_RATE / 2), n_mels + 2)
    hz_points = mel_to_hz(mel_points)
    widths = np.diff(hz_points)
    slopes = hz_points[:, None] - fft_freqs[None, :]  # (n_mels + 2, n_bins)
    down = -slopes[:-2] / widths[:-1, None]
    up = slopes[2:] / widths[1:, None]
    filters = np.maximum(0.0, np.minimum(down, up))
    filters *= (2.0 / (hz_points[2:] - hz_points[:-2]))[:, None]  # slaney area norm
    return filters.astype(np.float32)


@lru_cache(maxsize=1)
def _hann() -> np.ndarray:
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float64)


def log_mel_spectrogram(samples: np.ndarray, n_mels: int, pad_to_30s: bool = False) -> np.ndarray:
    """Whisper log-mel features, (n_mels, n_frames) float32, n_frames = len // HOP_LENGTH.

    With ``pad_to_30s`` the samples are zero-padded to 30 s first (Whisper's
    training-time input, 3000 frames), as WhisperFeatureExtractor does by default.
    """
    samples = np.asarray(samples, dtype=np.float64)
    if len(samples) > N_SAMPLES:
        raise AudioError(f"one window holds at most {CHUNK_LENGTH} s, got {len(samples) / SAMPLE_RATE:.1f} s")
    if pad_to_30s:
        samples = np.pad(samples, (0, N_SAMPLES - len(samples)))
    padded = np.pad(samples, (N_FFT // 2, N_FFT // 2), mode="reflect")
    n_frames = 1 + (len(padded) - N_FFT) // HOP_LENGTH
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP_LENGTH][:n_frames]
    spectrum = np.fft.rfft(frames * _hann(), axis=1)  # (n_frames, N_FFT // 2 + 1)
    power = (spectrum.real**2 + spectrum.imag**2).T  # (n_frames, bins) -> (bins, n_frames)
    mel = mel_filters(n_mels).astype(np.float64) @ power
    log_spec = np.log10(np.maximum(mel, 1e-10))[:, :-1]  # drop the last frame, as Whisper does
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)

"""The numpy front-end against transformers' WhisperFeatureExtractor, and bad audio input."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from falcon_audio_edge.audio import (
    N_FRAMES,
    N_SAMPLES,
    SAMPLE_RATE,
    SEGMENT_SECONDS,
    cut_ahead,
    load_audio,
    log_mel_spectrogram,
    pause_segments,
    piece_end,
    split_windows,
    validate_samples,
)
from falcon_audio_edge.errors import AudioError


@pytest.mark.parametrize("n_mels", [80, 128])
@pytest.mark.parametrize("clip", ["1s", "7s", "30s"])
def test_log_mel_matches_whisper_feature_extractor(clips, clip, n_mels):
    from transformers import WhisperFeatureExtractor

    samples = load_audio(clips[clip]).samples
    fe = WhisperFeatureExtractor(feature_size=n_mels)
    want = fe(samples, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features[0]
    got = log_mel_spectrogram(samples, n_mels, pad_to_30s=True)
    assert got.shape == want.shape == (n_mels, N_FRAMES)
    assert np.abs(got - want).max() < 1e-4


def test_log_mel_unpadded_has_one_frame_per_hop(clips):
    samples = load_audio(clips["7s"]).samples
    mel = log_mel_spectrogram(samples, 80)
    assert mel.shape == (80, len(samples) // 160)
    assert np.isfinite(mel).all()
    assert -1.5 <= mel.min() and mel.max() <= 3.0  # Whisper's normalised range


def test_stereo_44k_and_8k_are_downmixed_and_resampled(clips, tmp_path):
    mono = load_audio(clips["q0"]).samples
    import soxr

    stereo = np.stack([mono, mono], axis=1)
    sf.write(tmp_path / "stereo44.wav", soxr.resample(stereo, SAMPLE_RATE, 44100), 44100)
    sf.write(tmp_path / "mono8k.wav", soxr.resample(mono, SAMPLE_RATE, 8000), 8000)
    for name in ("stereo44.wav", "mono8k.wav"):
        got = load_audio(tmp_path / name).samples
        assert abs(len(got) - len(mono)) <= 2
        n = min(len(got), len(mono))
        corr = np.corrcoef(got[:n], mono[:n])[0, 1]
        assert corr > (0.99 if name.startswith("stereo") else 0.8)


def test_long_audio_splits_into_30s_windows():
    samples = np.ones(int(N_SAMPLES * 2.5), dtype=np.float32)
    windows = split_windows(samples)
    assert [len(w) for w in windows] == [N_SAMPLES, N_SAMPLES, N_SAMPLES // 2]


def test_long_audio_is_cut_at_its_pauses_into_pieces_of_bounded_length():
    rng = np.random.default_rng(0)
    sec = SAMPLE_RATE

    def talk(seconds):  # noise standing in for speech
        return (0.3 * rng.standard_normal(int(seconds * sec))).astype(np.float32)

    short = talk(SEGMENT_SECONDS)
    assert pause_segments(short) == [(0, len(short))]  # up to the limit: whole
    # pauses of 0.4 s after 4 s, 7.5 s, 13 s and 21 s of talk: each cut falls in one
    parts, pauses = [], []
    for seconds in (4, 3.5, 5.5, 8, 6):
        parts.append(talk(seconds))
        pauses.append(sum(map(len, parts)))
        parts.append(np.zeros(int(0.4 * sec), dtype=np.float32))
    samples = np.concatenate(parts[:-1])
    spans = pause_segments(samples)
    assert spans[0][0] == 0 and spans[-1][1] == len(samples)
    assert all(a[1] == b[0] for a, b in zip(spans[:-1], spans[1:], strict=True))  # in order, no gap, no overlap
    assert all(end - start <= SEGMENT_SECONDS * sec for start, end in spans)
    for _, cut in spans[:-1]:
        assert any(p <= cut <= p + 0.4 * sec for p in pauses), cut / sec  # in a pause, not in a word
    # no pause at all: still cut, each piece at most the limit, the last at least 1 s
    steady = talk(47)
    spans = pause_segments(steady)
    lengths = [end - start for start, end in spans]
    assert sum(lengths) == len(steady) and max(lengths) <= SEGMENT_SECONDS * sec and lengths[-1] >= sec
    assert len(spans) <= 2 * 47 / SEGMENT_SECONDS + 1  # each cut at least half the limit on: linear in the audio
    with pytest.raises(ValueError, match="max_seconds must be at least 3 s"):
        pause_segments(steady, max_seconds=2.01)
    assert max(e - s for s, e in pause_segments(steady, max_seconds=3.0)) <= 3 * sec


def test_a_piece_ends_at_the_first_pause_two_seconds_in_and_arriving_audio_is_cut_the_same():
    rng = np.random.default_rng(1)
    sec = SAMPLE_RATE

    def utterance(*talk_pause):  # talk and pause lengths in seconds, alternating
        parts = [(0.2 if i % 2 == 0 else 0.002) * rng.standard_normal(int(s * sec)) for i, s in enumerate(talk_pause)]
        return np.concatenate(parts).astype(np.float32)

    early = utterance(1.5, 0.4, 1.5)  # the only pause comes before 2 s: one piece
    assert pause_segments(early) == [(0, len(early))]
    late_tail = utterance(2.5, 0.4, 0.5)  # a pause after 2 s, but less than 1 s after it: one piece
    assert pause_segments(late_tail) == [(0, len(late_tail))]
    phrases = utterance(2.4, 0.4, 1.0, 0.3, 2.6, 0.5, 3.0)  # pauses at 2.4, 3.8 and 6.7 s
    spans = pause_segments(phrases)
    cuts = [end / sec for _, end in spans[:-1]]
    assert len(cuts) == 2 and 2.4 <= cuts[0] <= 2.8 and 6.7 <= cuts[1] <= 7.2, cuts  # 3.8 s is under 2 s on
    # the same cuts from the audio as it arrives in 100 ms blocks, each made once nothing to come can move it
    pending, arrived, block = np.zeros(0, np.float32), [], sec // 10
    for k in range(0, len(phrases), block):
        pending = np.concatenate([pending, phrases[k : k + block]])
        while (end := piece_end(pending, False)) is not None:
            arrived.append(end + (arrived[-1] if arrived else 0))
            pending = pending[end:]
    assert [e for _, e in spans[:-1]] == arrived
    assert piece_end(phrases[: int(2.2 * sec)], False) is None  # no pause yet: waits for more
    # the cut ahead: known once the pause is over, long before the second that settles it, and it is that cut
    assert cut_ahead(phrases[: int(2.2 * sec)]) is None  # no pause yet
    assert cut_ahead(phrases[: int(2.75 * sec)]) is None  # in the pause: the person may have stopped
    ahead = next(n for n in range(int(2.75 * sec), len(phrases), block) if cut_ahead(phrases[:n]) is not None)
    assert ahead <= int(3.0 * sec) and piece_end(phrases[:ahead], False) is None  # 0.2 s into the next words
    assert cut_ahead(phrases[:ahead]) == spans[0][1] == cut_ahead(phrases)  # the cut, and it does not move
    assert cut_ahead(early) is None and cut_ahead(utterance(1.0, 0.4, 1.0, 0.4, 1.0)) is not None  # 2 s in


def test_in_a_noisy_room_a_pause_is_the_room_s_own_level_not_a_dip_in_the_words():
    rng = np.random.default_rng(2)
    sec = SAMPLE_RATE

    def noisy(*talk_pause, dip=1.0, level=0.02):  # talk (0.2) over the room's noise, pauses at its level x dip
        parts = [level * rng.standard_normal(int(0.3 * sec))]  # the room before the words
        for i, s in enumerate(talk_pause):
            room = level * rng.standard_normal(int(s * sec))
            parts.append(room + 0.2 * rng.standard_normal(len(room)) if i % 2 == 0 else dip * room)
        return np.concatenate(parts).astype(np.float32)

    room = noisy(2.4, 0.4, 2.0)  # a pause 20 dB under the words (not PAUSE_DB), at the room's level: cut there
    (_, cut), _ = pause_segments(room)
    assert 2.7 * sec <= cut <= 3.1 * sec, cut / sec
    assert len(pause_segments(noisy(2.4, 0.4, 2.0, dip=4.0))) == 1  # a dip 8 dB under the words: not a pause
    # a quieter room: a dip 16 dB under the words is 14 dB over the room heard before it, so no pause either
    assert len(pause_segments(noisy(2.4, 0.4, 2.0, dip=5.0, level=0.2 / 10**1.5))) == 1
    assert len(pause_segments(noisy(2.4, 0.4, 2.0, level=0.2 / 10**1.5))) == 2  # at the room's level: cut


@pytest.mark.parametrize(
    "samples, message",
    [
        (np.zeros(0, dtype=np.float32), "empty"),
        (np.zeros(SAMPLE_RATE, dtype=np.float32), "silent"),
        (np.full(SAMPLE_RATE, np.nan, dtype=np.float32), "NaN"),
        (np.full(100, 0.5, dtype=np.float32), "shorter than"),
    ],
)
def test_bad_samples_are_refused(samples, message):
    with pytest.raises(AudioError, match=message):
        validate_samples(samples, "clip.wav")


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(AudioError, match="not found"):
        load_audio(tmp_path / "nope.wav")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00garbage that is not audio")
    with pytest.raises(AudioError, match="cannot read"):
        load_audio(bad)

"""Synthetic voices (train/voices.py): new espeak-ng variants made from the training ones, really spoken."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import soundfile as sf
from falcon_audio_edge.train import synth, voices

TEXT = "Where do koalas live? The bird sat on a wooden fence."


def spoken(bank: voices.VoiceBank, made: voices.SyntheticVoice, path, seed: int = 0) -> np.ndarray:
    """``TEXT`` spoken by the variant ``made`` describes (written into the bank), as samples."""
    lines = bank._lines
    text = voices.synthetic_variant(lines[made.base], lines[made.quality], made, random.Random(seed))
    (bank.path / "espeak-ng-data" / "voices" / "!v" / voices.VARIANT).write_text(text, encoding="latin-1")
    voice = synth.Voice("en-us", voices.VARIANT, 160, 50, bank.path)
    synth.speak(TEXT, voice, path, random.Random(0), augment=False)
    return sf.read(str(path))[0]


def centroid(samples: np.ndarray) -> float:
    """The spectral centroid in Hz of the voiced part (the loud frames)."""
    frames = np.lib.stride_tricks.sliding_window_view(samples, 512)[::256] * np.hanning(512)
    power = np.abs(np.fft.rfft(frames)) ** 2
    loud = power.sum(1) > 0.1 * power.sum(1).max()
    freqs = np.fft.rfftfreq(512, 1 / 16000)
    return float((power[loud] * freqs).sum() / power[loud].sum())


def test_a_variant_keeps_the_base_and_takes_the_voice_quality_of_the_second():
    base = [["name", "x"], ["pitch", "80", "120"], ["formant", "1", "100", "90", "100"], ["voicing", "50"],
            ["formant", "6", "0", "0", "0"], ["formant", "7", "-1", "90", "-1"], ["klatt", "3"]]  # fmt: skip
    quality = [["breath", "0", "2", "3"], ["echo", "140", "10"], ["formant", "1", "50", "50", "50"]]
    made = voices.SyntheticVoice("a", "b", tract=1.1, strength=0.5, width=2.0, pitch=1.25)
    text = voices.synthetic_variant(base, quality, made, random.Random(0)).splitlines()
    assert text[0] == f"name {voices.VARIANT}" and "name x" not in text
    assert "pitch 100 150" in text and "klatt 3" in text
    assert "formant 6 0 0 0" in text and "formant 7 -1 45 -1" in text  # off stays off; -1 (keep) stays -1
    formants = {int(line.split()[1]): line.split()[2:] for line in text if line.startswith("formant")}
    assert sorted(formants) == list(voices.FORMANTS)  # the second file's formants are not taken
    assert 100 * 1.1 * 0.96 <= int(formants[1][0]) <= 100 * 1.1 * 1.04 and formants[1][1:] == ["45", "200"]
    assert 110 * 0.96 <= int(formants[3][0]) <= 110 * 1.04 and formants[3][1:] == ["50", "200"]  # left out: 100%
    assert "voicing 50" not in text and "breath 0 2 3" in text and "echo 140 10" in text
    no_pitch = voices.synthetic_variant([], [], made, random.Random(0))
    assert "pitch 100 148" in no_pitch.splitlines()  # espeak-ng's own 80-118, times 1.25


def test_a_variant_without_a_pitch_line_speaks_as_with_espeaks_own_range(tmp_path):
    variant = tmp_path / "v"
    variant.write_text("name v\nlanguage variant\nformant 1 110 100 100\n")
    lines = voices.variant_lines(variant)
    with voices.VoiceBank(synth.espeak_data(), ["m3"]) as bank:
        folder = bank.path / "espeak-ng-data" / "voices" / "!v"
        voice = synth.Voice("en-us", "own", 160, 50, bank.path)
        (folder / "own").write_text("\n".join(" ".join(f) for f in lines) + "\n")
        synth.speak(TEXT, voice, tmp_path / "a.wav", random.Random(0), augment=False)
        (folder / "own").write_text(
            "\n".join(" ".join(f) for f in lines) + "\npitch {} {}\n".format(*voices.DEFAULT_PITCH)
        )
        synth.speak(TEXT, voice, tmp_path / "b.wav", random.Random(0), augment=False)
    a, b = sf.read(str(tmp_path / "a.wav"))[0], sf.read(str(tmp_path / "b.wav"))[0]
    assert len(a) == len(b) and np.abs(a - b).max() < 0.01  # a line off by one would move pitch and length


@pytest.mark.parametrize("base", ["m3", "klatt"])  # klatt's file has no formant lines at all
def test_espeak_speaks_the_bank_variant_and_a_longer_tract_sounds_lower(tmp_path, base):
    # espeak-ng silently ignores a variant it cannot find: the bank's must change the sound, and as asked
    with voices.VoiceBank(synth.espeak_data(), synth.TRAIN_VARIANTS) as bank:
        voice = synth.Voice("en-us", base, 160, 50)
        plain = synth.speak(TEXT, voice, tmp_path / "plain.wav", random.Random(0), False)
        made = dict(base=base, quality=base, strength=1.0, width=1.0, pitch=1.0)
        short = spoken(bank, voices.SyntheticVoice(tract=1.18, **made), tmp_path / "short.wav")
        long = spoken(bank, voices.SyntheticVoice(tract=0.88, **made), tmp_path / "long.wav")
        folder = bank.path
    assert not folder.exists()  # the bank's folder goes with the with block
    own = sf.read(str(tmp_path / "plain.wav"))[0]
    assert 0.8 * plain < len(short) / 16000 < 1.2 * plain
    assert centroid(long) < centroid(own) < centroid(short)
    assert centroid(short) > 1.1 * centroid(long)


def test_each_draw_is_a_new_voice_that_espeak_really_speaks(tmp_path):
    with voices.VoiceBank(synth.espeak_data(), synth.TRAIN_VARIANTS) as bank:
        rng = random.Random(5)
        heard = []
        for i in range(3):
            variant, _ = bank.draw(rng)
            synth.speak(TEXT, synth.Voice("en-us", variant, 160, 50, bank.path), tmp_path / f"{i}.wav", rng, False)
            heard.append(sf.read(str(tmp_path / f"{i}.wav"))[0].tolist())
    synth.speak(TEXT, synth.Voice("en-us", "", 160, 50), tmp_path / "plain.wav", rng, False)
    heard.append(sf.read(str(tmp_path / "plain.wav"))[0].tolist())  # what espeak-ng says for a variant it lacks
    assert all(heard[i] != heard[j] for i in range(4) for j in range(i))


def test_respeak_with_synthetic_voices_records_them_and_draws_only_training_variants(tmp_path, monkeypatch):
    from falcon_audio_edge.train.grow import respeak

    read, real = [], voices.variant_lines
    monkeypatch.setattr(voices, "variant_lines", lambda path: read.append(path.name) or real(path))

    from falcon_audio_edge.errors import ConfigError

    row = {"audio": "a.wav", "instruction": "Transcribe the audio.", "target": "The cat sat on the mat.",
           "task": "transcribe", "text": "The cat sat on the mat."}  # fmt: skip
    (tmp_path / "in.jsonl").write_text(json.dumps(row) + "\n")
    manifest = respeak(tmp_path / "in.jsonl", tmp_path / "out", copies=8, seed=2, voices=1.0, accents=0.5)
    new = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert all(r["voice"].endswith("+" + voices.VARIANT) for r in new)
    made = [r["synthetic_voice"] for r in new]
    assert {m["base"] for m in made} | {m["quality"] for m in made} <= set(synth.TRAIN_VARIANTS)
    assert set(read) == {v for v in synth.TRAIN_VARIANTS if v}  # the only variant files opened
    assert all(voices.TRACT[0] <= m["tract"] <= voices.TRACT[1] for m in made)
    assert len({m["tract"] for m in made}) == 8  # a new variant for every clip
    assert any("accent_moves" in r for r in new)
    sizes = {len(sf.read(str(tmp_path / "out" / r["audio"]))[0]) for r in new}
    assert len(sizes) > 1 and min(sizes) > 0.5 * 16000
    plain = respeak(tmp_path / "in.jsonl", tmp_path / "plain", copies=2, seed=2)
    assert all("synthetic_voice" not in json.loads(line) for line in plain.read_text().splitlines())
    for bad in (1.5, -0.1, True, "half"):
        with pytest.raises(ConfigError, match=f"--voices must be a share from 0 to 1, got {bad!r}"):
            respeak(tmp_path / "in.jsonl", tmp_path / "bad", voices=bad)
    assert not (tmp_path / "bad").exists()


def test_a_bank_refuses_unknown_held_out_and_no_variants_and_a_bad_file(tmp_path):
    from falcon_audio_edge.errors import SetupError

    data = synth.espeak_data()
    with pytest.raises(SetupError, match="no variant \\['nonesuch'\\]"):
        voices.VoiceBank(data, ["m3", "nonesuch"])
    with pytest.raises(SetupError, match="\\['f4', 'klatt5'\\] are held-out or dev"):
        voices.VoiceBank(data, ["m3", "klatt5", "f4"])
    with pytest.raises(SetupError, match="at least one named variant, got \\[''\\]"):
        voices.VoiceBank(data, [""])
    (tmp_path / "bad").write_text("pitch 80 high\n")
    with pytest.raises(SetupError, match="'pitch 80 high' is not a line of integers"):
        voices.variant_lines(tmp_path / "bad")


def test_synth_words_refuses_a_bad_voices_share_before_anything(tmp_path):
    from falcon_audio_edge.train.grow import random_word_set

    from falcon_audio_edge.errors import ConfigError

    with pytest.raises(ConfigError, match="--voices must be a share from 0 to 1, got 2"):
        random_word_set(tmp_path / "out", tmp_path / "missing.gguf", 1, voices=2)
    assert not (tmp_path / "out").exists()

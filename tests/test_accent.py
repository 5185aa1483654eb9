"""Synthetic accents (train/accent.py): vowels moved on the chart, consistently, spoken by espeak-ng."""

from __future__ import annotations

import json
import math
import random
import subprocess

import pytest
import soundfile as sf
from falcon_audio_edge.train import accent, synth


@pytest.mark.parametrize("voice", synth.TRAIN_ACCENTS)
def test_every_chart_vowel_is_a_phoneme_of_every_training_accent(voice):
    # espeak-ng reads an unknown mnemonic as other phonemes ("@U" comes back as "@r-U" in en-gb), so each
    # vowel, spoken from phonemes, must come back as itself
    words = [f"b'{vowel}d" for vowel in accent.VOWEL_CHART]
    cmd = ["espeak-ng", "-q", "-x", "-v", voice, "--", "[[" + " ".join(words) + "]]"]
    read = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()
    assert read == words


def test_nearest_vowels_are_the_closest_on_the_chart_and_never_the_vowel_itself():
    for vowel, place in accent.VOWEL_CHART.items():
        near = accent.nearest(vowel)
        assert len(near) == accent.NEIGHBOURS and vowel not in near
        far = min(math.dist(place, accent.VOWEL_CHART[v]) for v in accent.VOWEL_CHART if v not in near + [vowel])
        assert max(math.dist(place, accent.VOWEL_CHART[v]) for v in near) <= far
    assert set(accent.nearest("i:")) == {"I", "eI", "e"}


def test_a_shift_moves_every_occurrence_of_a_vowel_alike_and_nothing_else():
    words = [["b", "'i:", "d"], ["s", "i:"], ["k", ",aI", "t", "@"], ["a#"]]
    for seed in range(20):
        spoken, moves = accent.accent_shift(words, random.Random(seed), 2)
        assert len(moves) == 2 and set(moves) <= {"i:", "aI"}  # full vowels only: @ and a# never move
        assert all(moves[v] in accent.nearest(v) for v in moves)
        i, ai = moves["i:"], moves["aI"]
        assert spoken == f"[[b'{i}d s{i} k,{ai}t@ a#]]"
    spoken, moves = accent.accent_shift(words, random.Random(0), 5)  # more moves than vowel kinds: all of them
    assert set(moves) == {"i:", "aI"}
    assert accent.accent_shift([["a#"], ["@"]], random.Random(0), 3) == ("[[a# @]]", {})


def test_espeak_reads_its_own_phonemes_back_and_speaks_the_shifted_ones(tmp_path):
    text = "Where do koalas live? The bird sat on a wooden fence."
    words = accent.phonemes(text, "en-us")
    assert len(words) == 11 and all(words)
    spoken, moves = accent.accent_shift(words, random.Random(4), 3)
    assert len(moves) == 3
    cmd = ["espeak-ng", "-q", "-x", "-v", "en-us", "--", spoken]
    heard = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()
    assert heard == spoken.strip("[]").split()  # espeak-ng took every shifted phoneme as written
    rng = random.Random(1)
    voice = synth.Voice("en-us", "m3", 160, 50)
    plain = synth.speak(text, voice, tmp_path / "plain.wav", rng, augment=False)
    shifted = synth.speak(spoken, voice, tmp_path / "shifted.wav", rng, augment=False)
    samples, _ = sf.read(str(tmp_path / "shifted.wav"))
    assert 0.6 * plain < shifted < 1.4 * plain and 0.01 < abs(samples).max() <= 1.0
    assert sf.read(str(tmp_path / "plain.wav"))[0].tolist() != samples.tolist()


def test_respeak_with_accents_marks_the_accented_clips_and_refuses_a_bad_share(tmp_path):
    from falcon_audio_edge.train.grow import respeak

    from falcon_audio_edge.errors import ConfigError

    row = {"audio": "a.wav", "instruction": "Transcribe the audio.", "target": "The cat sat on the mat.",
           "task": "transcribe", "text": "The cat sat on the mat."}  # fmt: skip
    (tmp_path / "in.jsonl").write_text(json.dumps(row) + "\n")
    manifest = respeak(tmp_path / "in.jsonl", tmp_path / "out", copies=3, seed=2, accents=1.0)
    new = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert all(1 <= r["accent_moves"] <= accent.MAX_MOVES for r in new)
    plain = respeak(tmp_path / "in.jsonl", tmp_path / "plain", copies=2, seed=2)
    assert all("accent_moves" not in json.loads(line) for line in plain.read_text().splitlines())
    for bad in (1.5, -0.1, True, "half"):
        with pytest.raises(ConfigError, match=f"--accents must be a share from 0 to 1, got {bad!r}"):
            respeak(tmp_path / "in.jsonl", tmp_path / "bad", accents=bad)
        assert not (tmp_path / "bad").exists()


def test_consonant_features_change_every_place_they_fit_and_nothing_else():
    words = [["h", "'aUs"], ["g", ",oU", "I", "N"], ["T", "'I", "N", "k"], ["D", "a", "t"], ["b", "'I", "t", "@"]]
    spoken = {f: accent.accent_shift(words, random.Random(0), 0, (f,))[0] for f in accent.CONSONANT_FEATURES}
    assert spoken["h-dropping"] == "[['aUs g,oUIN T'INk Dat b'It@]]"  # the stress mark stays with the vowel
    assert spoken["g-dropping"] == "[[h'aUs g,oUIn T'INk Dat b'It@]]"  # final -IN only: think keeps its N
    assert spoken["th-fronting"] == "[[h'aUs g,oUIN f'INk vat b'It@]]"
    assert spoken["t-glottalling"] == "[[h'aUs g,oUIN T'INk Da? b'It@]]"  # word-final t only
    both, moves = accent.accent_shift(words, random.Random(0), 0, ("h-dropping", "th-fronting"))
    assert both == "[['aUs g,oUIN f'INk vat b'It@]]" and moves == {}
    assert accent.accent_shift([["h"]], random.Random(0), 0, ("h-dropping",))[0] == "[[h]]"  # never an empty word
    with pytest.raises(ValueError, match="unknown consonant feature 'r-rolling'"):
        accent.consonant_feature([("", "r")], "r-rolling")


@pytest.mark.parametrize("voice", synth.TRAIN_ACCENTS)
def test_espeak_takes_the_consonant_features_phonemes_as_written(voice):
    words = accent.phonemes("How is he thinking about going out with that?", voice)
    spoken, _ = accent.accent_shift(words, random.Random(0), 0, accent.CONSONANT_FEATURES)
    cmd = ["espeak-ng", "-q", "-x", "-v", voice, "--", spoken]
    heard = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()
    assert heard == spoken.strip("[]").split()  # every changed phoneme is one espeak-ng has in this accent
    assert "h" not in "".join(heard) and "T" not in "".join(heard) and "?" in "".join(heard)


def test_consonant_draws_happen_only_when_asked_and_are_recorded(tmp_path):
    from falcon_audio_edge.train.grow import respeak

    from falcon_audio_edge.errors import ConfigError

    rng = random.Random(3)
    assert accent.draw_consonants(rng, 0.0) == () and rng.random() == random.Random(3).random()  # no draw at 0
    row = {"audio": "a.wav", "instruction": "Transcribe the audio.", "target": "He thinks that it is going well.",
           "task": "transcribe", "text": "He thinks that it is going well."}  # fmt: skip
    (tmp_path / "in.jsonl").write_text(json.dumps(row) + "\n")
    manifest = respeak(tmp_path / "in.jsonl", tmp_path / "out", copies=6, seed=2, accents=1.0, consonants=1.0)
    new = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert all(r["accent_consonants"] == list(accent.CONSONANT_FEATURES) for r in new)
    with pytest.raises(ConfigError, match="--consonants must be a share from 0 to 1, got 2"):
        respeak(tmp_path / "in.jsonl", tmp_path / "bad", consonants=2)

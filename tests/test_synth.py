"""The synthetic set's voices: every one exists in espeak-ng (which would silently fall back to its default
voice otherwise), training and held-out voices never meet, and a clip comes out as 16 kHz mono speech."""

from __future__ import annotations

import random

import pytest
import soundfile as sf
from falcon_audio_edge.train import synth

from falcon_audio_edge.audio import SAMPLE_RATE


def test_every_voice_exists_and_held_out_voices_stay_out_of_training():
    synth.check_voices()
    assert not set(synth.TRAIN_VARIANTS) & set(synth.HELDOUT_VARIANTS)
    assert not set(synth.TRAIN_ACCENTS) & set(synth.HELDOUT_ACCENTS)


def test_a_misspelled_voice_is_an_error_naming_it(monkeypatch):
    with pytest.raises(RuntimeError, match=r"no voice or variant \['m99', 'en-xx'\]"):
        synth.check_voices(["m1", "m99"], ["en-us", "en-xx"])
    monkeypatch.setattr(synth, "TRAIN_VARIANTS", [*synth.TRAIN_VARIANTS, "f4"])
    with pytest.raises(RuntimeError, match=r"\['f4'\] are in both"):
        synth.check_voices()


@pytest.mark.parametrize("heldout", [False, True])
def test_speak_writes_16k_mono_speech(tmp_path, heldout):
    rng = random.Random(3)
    voice = synth.random_voice(rng, heldout)
    seconds = synth.speak("The train leaves at seven.", voice, tmp_path / "a.wav", rng, augment=not heldout)
    samples, rate = sf.read(str(tmp_path / "a.wav"))
    assert rate == SAMPLE_RATE and samples.ndim == 1
    assert 0.8 < seconds < 4.0 and abs(len(samples) / rate - seconds) < 1e-6
    assert 0.01 < abs(samples).max() <= 1.0


def test_synth_without_the_llm_is_one_error_line_and_writes_nothing(tmp_path):
    from tests.conftest import fa_edge

    proc = fa_edge("synth", "-o", tmp_path / "data", "--llm", tmp_path / "missing.gguf", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"error: --llm {tmp_path / 'missing.gguf'}: no such GGUF file"
    assert not (tmp_path / "data").exists()

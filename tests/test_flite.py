"""flite, the second speech engine (train/flite.py): its voices exist and stay apart, its clips are 16 kHz speech
at the rate asked, training sets can mix it in, and the held-out voice respeaks an evaluation manifest."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
import soundfile as sf
from falcon_audio_edge.train import flite, synth
from falcon_audio_edge.train.grow import respeak

from falcon_audio_edge.audio import SAMPLE_RATE
from falcon_audio_edge.errors import ConfigError, SetupError

TEXT = "The train leaves at seven."


def _voice(name: str, rate: int = 170) -> synth.Voice:
    return synth.Voice(flite.ENGINE, name, rate, 0, engine=flite.ENGINE)


def _rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_every_flite_voice_exists_and_the_held_out_one_stays_out_of_training(monkeypatch):
    flite.check_flite()
    assert not set(flite.TRAIN_VOICES) & set(flite.HELDOUT_VOICES)
    with pytest.raises(SetupError, match=r"flite has no voice \['nosuch'\]"):
        flite.check_flite(("rms", "nosuch"))
    monkeypatch.setattr(flite, "TRAIN_VOICES", (*flite.TRAIN_VOICES, "awb"))
    with pytest.raises(SetupError, match=r"\['awb'\] are in training and held out"):
        flite.check_flite()


@pytest.mark.parametrize("name", flite.TRAIN_VOICES + flite.HELDOUT_VOICES)
def test_a_flite_clip_is_16k_mono_speech_at_the_rate_asked(tmp_path, name):
    rng = random.Random(0)
    slow = synth.speak(TEXT, _voice(name, 130), tmp_path / "slow.wav", rng, augment=False)
    fast = synth.speak(TEXT, _voice(name, 200), tmp_path / "fast.wav", rng, augment=False)
    samples, rate = sf.read(str(tmp_path / "fast.wav"))
    assert rate == SAMPLE_RATE and samples.ndim == 1 and 0.01 < abs(samples).max() <= 1.0
    assert 0.8 < fast < slow < 4.0 and slow / fast > 1.3  # 200 vs 130 words a minute
    assert _voice(name).name == f"flite-{name}"


def test_respeak_mixes_in_flite_training_voices_and_zero_draws_none(tmp_path):
    rows = [{"audio": "a.wav", "instruction": "Transcribe the audio.", "target": TEXT, "task": "transcribe",
             "text": TEXT}]  # fmt: skip
    manifest = _rows(tmp_path / "in.jsonl", rows)
    mixed = [
        json.loads(x)
        for x in respeak(manifest, tmp_path / "mixed", copies=16, seed=1, flite=0.5).read_text().splitlines()
    ]
    engines = [r["voice"].startswith("flite-") for r in mixed]
    assert 0 < sum(engines) < 16  # some of each
    for r in mixed:
        if r["voice"].startswith("flite-"):
            assert r["voice"].removeprefix("flite-") in flite.TRAIN_VOICES and r["pitch"] is None
            assert r["target"] == TEXT and 0.5 < sf.info(str(tmp_path / "mixed" / r["audio"])).duration < 4
    all_flite = respeak(manifest, tmp_path / "all", copies=4, seed=1, flite=1.0).read_text().splitlines()
    assert all(json.loads(x)["voice"].startswith("flite-") for x in all_flite)
    plain = [
        json.loads(x)["voice"] for x in respeak(manifest, tmp_path / "plain", copies=4, seed=1).read_text().splitlines()
    ]
    assert plain == [
        json.loads(x)["voice"]
        for x in respeak(manifest, tmp_path / "zero", copies=4, seed=1, flite=0.0).read_text().splitlines()
    ]
    assert not any(v.startswith("flite-") for v in plain)
    with pytest.raises(ConfigError, match=r"--flite must be a share from 0 to 1, got 1.5"):
        respeak(manifest, tmp_path / "bad", flite=1.5)
    assert not (tmp_path / "bad").exists()


def test_revoice_speaks_an_evaluation_manifest_with_the_held_out_voice(tmp_path):
    question = synth.read_lines("questions_heldout.txt")[0]  # held-out sentences are what it is for
    rows = [
        {"audio": "clips/0.wav", "instruction": "Transcribe the audio.", "target": question, "task": "transcribe",
         "text": question, "voice": "en-gb-x-gbclan+m7"},
        {"audio": "clips/1.wav", "instruction": "", "target": "An answer.", "task": "qa", "text": question},
    ]  # fmt: skip
    out = flite.revoice(_rows(tmp_path / "heldout.jsonl", rows), tmp_path / "heldout-flite")
    new = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(r["target"], r["task"], r["text"]) for r in new] == [(r["target"], r["task"], r["text"]) for r in rows]
    assert {r["voice"] for r in new} == {"flite-awb"}
    assert all(0.5 < sf.info(str(out.parent / r["audio"])).duration < 5 for r in new)
    with pytest.raises(ConfigError, match=r"already exists"):
        flite.revoice(tmp_path / "heldout.jsonl", tmp_path / "heldout-flite")
    with pytest.raises(ConfigError, match=r"held-out flite voices \('awb',\), got \['rms'\]"):
        flite.revoice(tmp_path / "heldout.jsonl", tmp_path / "x", voices=("rms",))
    assert not (tmp_path / "x").exists()


def test_the_revoice_command_on_bad_input_is_one_error_line_and_writes_nothing(tmp_path):
    bad = _rows(tmp_path / "bad.jsonl", [{"audio": "a.wav", "instruction": "", "target": "x", "task": "qa"}])
    for manifest in (bad, tmp_path / "missing.jsonl"):
        proc = subprocess.run([sys.executable, "-m", "falcon_audio_edge.train.flite", str(manifest), "-o",
                               str(tmp_path / "out")], capture_output=True, text=True)  # fmt: skip
        assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
        assert not (tmp_path / "out").exists()

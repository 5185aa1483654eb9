"""The natural-voice data set: voice table rules, rooms and microphones, sentences, and a small real build."""

from __future__ import annotations

import json
import random
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from falcon_audio_edge.train import natural, prose, rooms

from falcon_audio_edge.audio import SAMPLE_RATE, load_audio
from falcon_audio_edge.errors import ConfigError, FaEdgeError, SetupError

needs_flite = pytest.mark.skipif(shutil.which("flite") is None, reason="flite is not installed")
FESTIVAL_KAL = next(v for v in natural.VOICES if v.name == "festival-kal")
needs_festival_kal = pytest.mark.skipif(
    shutil.which("festival") is None or not Path("/usr/share/festival/voices/english/kal_diphone").is_dir(),
    reason="festival's kal_diphone voice is not installed",
)


def tone(seconds: float = 2.0) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.5 * np.sin(2 * np.pi * 440 * t) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def band_energy(x: np.ndarray, low: float, high: float) -> float:
    spec = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE)
    return float(spec[(freqs >= low) & (freqs < high)].sum() / spec.sum())


def test_the_table_keeps_families_apart_and_non_free_voices_out_of_training():
    natural.check_table()
    roles = {v.family: v.role for v in natural.VOICES}
    assert {"train", "dev", "heldout"} == set(roles.values())
    assert all(v.role != "train" for v in natural.VOICES if "non-free" in v.licence)
    twin = replace(natural.VOICES[0], name="piper-twin", role="dev")  # piper's family in dev as well
    with pytest.raises(ConfigError, match="more than one role.*piper"):
        natural.check_table((*natural.VOICES, twin))
    pico = next(v for v in natural.VOICES if v.engine == "pico")
    with pytest.raises(ConfigError, match="may not train"):
        natural.check_table((replace(pico, role="train", family="pico-train"),))


def test_a_room_and_microphone_change_the_clip_within_bounds():
    x = tone()
    out, done = rooms.apply(x, random.Random(3), rooms.RoomSettings(speed=1, room=1, noise=1, band=1))
    assert np.isfinite(out).all() and out.dtype == np.float32
    assert rooms.LEVEL[0] - 1e-6 <= np.abs(out).max() <= rooms.LEVEL[1] + 1e-6
    assert abs(len(out) - len(x) / done["speed"]) <= 2  # a faster clip is shorter
    assert {"speed", "rt60", "band", "noise", "snr_db"} <= set(done)
    again, _ = rooms.apply(x, random.Random(3), rooms.RoomSettings(speed=1, room=1, noise=1, band=1))
    np.testing.assert_array_equal(out, again)  # the seed rebuilds it
    plain, nothing = rooms.apply(x, random.Random(3), rooms.RoomSettings(0, 0, 0, 0))
    assert nothing == {} and np.corrcoef(plain, x)[0, 1] > 0.999


def test_the_telephone_and_band_limits_remove_what_they_should():
    rng = np.random.default_rng(0)
    white = rng.standard_normal(SAMPLE_RATE).astype(np.float32)
    assert band_energy(white, 4000, 8000) > 0.4
    assert band_energy(rooms.telephone(white), 4000, 8000) < 0.01
    assert band_energy(rooms.band_pass(white, 300, 3400), 0, 150) < 0.01
    for kind in rooms.NOISES:
        noise = rooms.coloured_noise(rng, kind, SAMPLE_RATE)
        assert abs(float(np.sqrt(np.mean(noise**2))) - 1.0) < 1e-3
    assert band_energy(rooms.coloured_noise(rng, "brown", SAMPLE_RATE), 0, 500) > 0.9


def test_room_settings_are_checked():
    with pytest.raises(ValueError, match="rooms.noise"):
        rooms.RoomSettings(noise=1.5).validate()


def test_training_sentences_never_hold_a_dev_or_heldout_sentence(tmp_path):
    folder = tmp_path / "fortunes"
    folder.mkdir()
    dev_line = prose.read_list("questions_dev.txt")[0]
    (folder / "wisdom").write_text(
        "A journey of a thousand miles begins with a single step.\n%\n"
        f"{dev_line}\n%\nTOO LOUD TO SAY IN A QUIET ROOM.\n%\nShort.\n%\n"
        "The wise man reads both books and people.\n\t\t-- Someone Famous\n"
    )
    (folder / "wisdom.dat").write_bytes(b"\0\1")  # an index: not read
    found = prose.fortune_sentences(folder)
    assert "A journey of a thousand miles begins with a single step." in found
    assert "The wise man reads both books and people." in found
    assert not any("LOUD" in s or s == "Short." or "Famous" in s for s in found)
    train = prose.split_sentences("train", fortunes=folder, n_commands=50)
    assert prose.key(dev_line) not in {prose.key(s) for s in train}
    assert len(set(prose.commands(50))) == 50 and any(c[-2].isdigit() or "times" in c for c in prose.commands(50))
    with pytest.raises(ConfigError, match="unknown split"):
        prose.split_sentences("test")


def test_a_missing_engine_is_named_and_skipped_and_none_left_is_an_error(monkeypatch):
    said = []
    monkeypatch.setattr(natural.shutil, "which", lambda tool: None if tool == "pico2wave" else "/usr/bin/" + tool)
    with pytest.raises(SetupError, match="no heldout voice"):
        natural.usable_voices("heldout", natural.Speakers(), said.append)
    assert said and all("pico2wave is not installed" in s for s in said)


def test_festival_refuses_text_it_would_crash_on_and_a_voice_that_is_not_a_name(tmp_path):
    with pytest.raises(ConfigError, match=r"no letter or digit"):
        natural.festival_command(' " ', "kal_diphone", 1.0, tmp_path / "x.wav")  # festival crashes on empty text
    with pytest.raises(ConfigError, match=r"is not a voice name"):
        natural.festival_command("The train leaves at seven.", "kal) (quit", 1.0, tmp_path / "x.wav")


@pytest.mark.parametrize("status", [0, 1])
def test_an_engine_that_writes_no_audio_is_an_error_naming_the_voice(monkeypatch, status):
    # festival's way with an unknown voice: a Scheme error on stderr, exit status 0, no file; or a crash
    said = f"import sys; print('SIOD ERROR: unbound variable', file=sys.stderr); sys.exit({status})"
    monkeypatch.setattr(natural, "engine_command", lambda *args: ([sys.executable, "-c", said], None))
    expected = rf"festival-kal wrote no audio for 'Hi there\.' \(exit status {status}\): SIOD"
    with pytest.raises(FaEdgeError, match=expected):
        natural.Speakers().speak(FESTIVAL_KAL, "Hi there.", 1.0)


@needs_festival_kal
def test_festival_speaks_quotes_and_backslashes_and_at_the_rate_asked():
    speakers = natural.Speakers()
    # unquoted, this text would end the Scheme string and run (quit): festival would write nothing
    quoted = len(speakers.speak(FESTIVAL_KAL, 'He said "stop")) (quit) (" \\ then left.', 1.0)) / SAMPLE_RATE
    plain = len(speakers.speak(FESTIVAL_KAL, "He said stop then left.", 1.0)) / SAMPLE_RATE
    assert plain + 0.2 < quoted < plain + 2.5  # all of it spoken: "quit" too, and pauses at the quotes
    slow = len(speakers.speak(FESTIVAL_KAL, "The train leaves at seven.", 0.8))
    fast = len(speakers.speak(FESTIVAL_KAL, "The train leaves at seven.", 1.2))
    assert slow / fast > 1.3


@needs_flite
def test_a_small_split_is_built_whole_with_its_rows(tmp_path, monkeypatch):
    flite = tuple(v for v in natural.VOICES if v.engine == "flite")
    monkeypatch.setattr(natural, "VOICES", flite)
    manifest = natural.build_split("train", ["Open the door please.", "It is raining today."], 3, tmp_path / "t", 0,
                                   say=lambda m: None)  # fmt: skip
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert len(rows) == 3 and {r["task"] for r in rows} == {"transcribe"}
    assert {r["voice"] for r in rows} <= {v.name for v in flite}
    for r in rows:
        clip = load_audio(manifest.parent / r["audio"])
        assert 0.5 < clip.seconds < 8 and abs(clip.seconds - r["seconds"]) < 0.01
        assert r["target"] == r["text"] in ("Open the door please.", "It is raining today.")


def test_the_data_command_refuses_an_unknown_split(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        natural.main(["-o", str(tmp_path / "d"), "--splits", "test"])
    assert exit_info.value.code == 2 and "error: --splits: unknown split 'test'" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()

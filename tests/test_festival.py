"""festival, a third speech engine for the test of hearing (train/festival.py): its held-out voice exists, its
clips are 16 kHz speech at the rate asked, quoting survives, its quiet failures become errors, and it respeaks
an evaluation manifest (train/revoice.py)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest
import soundfile as sf
from falcon_audio_edge.train import festival, synth

from falcon_audio_edge.audio import SAMPLE_RATE
from falcon_audio_edge.errors import ConfigError, FaEdgeError, SetupError

TEXT = "The train leaves at seven."


def _voice(rate: int = 170, name: str = "ked_diphone") -> synth.Voice:
    return synth.Voice(festival.ENGINE, name, rate, 0, engine=festival.ENGINE)


def test_the_held_out_festival_voice_exists_and_an_unknown_one_is_named():
    festival.check_festival()
    with pytest.raises(SetupError, match=r"festival has no voice \['nosuch_diphone'\]"):
        festival.check_festival(("ked_diphone", "nosuch_diphone"))


def test_a_festival_clip_is_16k_mono_speech_at_the_rate_asked(tmp_path):
    rng = random.Random(0)
    slow = synth.speak(TEXT, _voice(130), tmp_path / "slow.wav", rng, augment=False)
    fast = synth.speak(TEXT, _voice(200), tmp_path / "fast.wav", rng, augment=False)
    samples, rate = sf.read(str(tmp_path / "fast.wav"))
    assert rate == SAMPLE_RATE and samples.ndim == 1 and 0.01 < abs(samples).max() <= 1.0
    assert 0.8 < fast < slow < 4.0 and slow / fast > 1.3  # 200 vs 130 words a minute
    assert _voice().name == "festival-ked_diphone" and _voice().row()["pitch"] is None


def test_quotes_and_backslashes_are_spoken_not_run_and_bad_text_or_voices_are_refused(tmp_path):
    # unquoted, this text would end the Scheme string and run (quit): festival would write nothing
    quoted = 'He said "stop")) (quit) (" \\ then left.'
    seconds = synth.speak(quoted, _voice(), tmp_path / "q.wav", random.Random(0), augment=False)
    plain = synth.speak("He said stop then left.", _voice(), tmp_path / "p.wav", random.Random(0), augment=False)
    assert plain + 0.2 < seconds < plain + 2.5  # all of it spoken: "quit" too, and pauses at the quotes
    with pytest.raises(ConfigError, match=r"no letter or digit"):
        festival.festival_command(' " ', "ked_diphone", 170, tmp_path / "x.wav")  # festival crashes on empty text
    with pytest.raises(ConfigError, match=r"is not a voice name"):
        festival.festival_command(TEXT, "ked) (quit", 170, tmp_path / "x.wav")


@pytest.mark.parametrize("status", [0, 1])
def test_an_engine_that_writes_no_audio_is_an_error_naming_it(tmp_path, status):
    # text2wave's way with an unknown voice: a Scheme error on stderr, exit status 0, no file; or a crash
    class Quiet(synth.Voice):
        def command(self, text, out):
            said = f"import sys; print('SIOD ERROR: unbound variable', file=sys.stderr); sys.exit({status})"
            return [sys.executable, "-c", said]

    with pytest.raises(FaEdgeError, match=rf"festival wrote no audio for 'Hi there\.' .*status {status}\): SIOD"):
        synth.speak("Hi there.", Quiet("festival", "ked_diphone", 170, 0, engine="festival"), tmp_path / "o.wav",
                    random.Random(0), augment=False)  # fmt: skip
    assert not (tmp_path / "o.wav").exists()


def test_revoice_speaks_an_evaluation_manifest_with_the_festival_voice(tmp_path):
    question = synth.read_lines("questions_heldout.txt")[0]
    rows = [
        {"audio": "clips/0.wav", "instruction": "Transcribe the audio.", "target": question, "task": "transcribe",
         "text": question, "voice": "en-gb-x-gbclan+m7"},
        {"audio": "clips/1.wav", "instruction": "", "target": "An answer.", "task": "qa", "text": question},
    ]  # fmt: skip
    manifest = tmp_path / "heldout.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = festival.revoice(manifest, tmp_path / "heldout-festival")
    new = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(r["target"], r["task"], r["text"]) for r in new] == [(r["target"], r["task"], r["text"]) for r in rows]
    assert {r["voice"] for r in new} == {"festival-ked_diphone"}
    assert all(0.5 < sf.info(str(out.parent / r["audio"])).duration < 5 for r in new)
    with pytest.raises(ConfigError, match=r"already exists"):
        festival.revoice(manifest, tmp_path / "heldout-festival")
    with pytest.raises(ConfigError, match=r"only its held-out voices \('ked_diphone',\), got \['kal_diphone'\]"):
        festival.revoice(manifest, tmp_path / "x", voices=("kal_diphone",))
    assert not (tmp_path / "x").exists()


def test_the_festival_command_on_bad_input_is_one_error_line_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"audio": "a.wav", "instruction": "", "target": "x", "task": "qa", "text": " "}) + "\n")
    for manifest in (bad, tmp_path / "missing.jsonl"):
        proc = subprocess.run([sys.executable, "-m", "falcon_audio_edge.train.festival", str(manifest), "-o",
                               str(tmp_path / "out")], capture_output=True, text=True)  # fmt: skip
        assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("engine", ["flite", "festival", "espeak-ng"])
def test_an_engine_that_fails_its_voice_listing_is_one_error_line_naming_it(tmp_path, engine):
    # an engine that is installed but broken (missing data, a bad config): its query fails, no traceback
    fake = tmp_path / "bin" / engine
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'cannot open voice data' >&2\nexit 3\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}"}
    manifest = tmp_path / "heldout.jsonl"
    manifest.write_text(json.dumps({"audio": "a.wav", "instruction": "", "target": TEXT, "text": TEXT}) + "\n")
    if engine == "espeak-ng":  # fa-edge synth checks its voices before it loads the LLM
        command = ["-c", "from falcon_audio_edge.cli import main; main()", "synth", "--llm", str(manifest)]
    else:
        command = ["-m", f"falcon_audio_edge.train.{engine}", str(manifest)]
    proc = subprocess.run([sys.executable, *command, "-o", str(tmp_path / "out")], env=env, capture_output=True,
                          text=True)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: `") and f"{engine}" in proc.stderr
    assert "exit status 3): cannot open voice data" in proc.stderr
    assert not (tmp_path / "out").exists()

"""fa-edge bench --live: a clip played at real time through the assistant's endpointer and turn."""

from __future__ import annotations

import json

import numpy as np
import pytest

from falcon_audio_edge.audio import SAMPLE_RATE
from falcon_audio_edge.bench.clips import speech_clip
from falcon_audio_edge.bench.live import BLOCK, speech_end
from falcon_audio_edge.errors import FaEdgeError
from tests.conftest import fa_edge

pytest.importorskip("faster_whisper")  # the endpointer's Silero VAD weights


def test_speech_end_finds_the_last_loud_frame_and_refuses_silence():
    clip = speech_clip(3.0).samples
    padded = np.concatenate([clip, np.zeros(SAMPLE_RATE, np.float32)])
    end = speech_end(padded)
    assert len(clip) - BLOCK <= speech_end(clip) <= end <= len(clip) + BLOCK  # cut mid-word; 32 ms frames
    assert end > 2 * SAMPLE_RATE
    with pytest.raises(FaEdgeError, match="no speech"):
        speech_end(np.zeros(SAMPLE_RATE, np.float32))
    with pytest.raises(FaEdgeError, match="no speech"):
        speech_end(np.zeros(0, np.float32))


def test_a_live_run_measures_the_gap_from_the_end_of_speech(tmp_path, bundle_f32):
    out = tmp_path / "live.md"
    proc = fa_edge("bench", "--live", bundle_f32, "--audio-seconds", "3", "--repeats", "1", "--tokens", "2",
                   "--threads", "1", "--out", out, "--json")  # fmt: skip
    (turn,) = json.loads(proc.stdout)
    # the endpointer needs 700 ms of silence: the gap holds that wait and the turn's own work
    assert 0.6 <= turn["endpoint_s"] <= 1.2, turn
    assert turn["endpoint_s"] < turn["gap_s"] < turn["endpoint_s"] + 5, turn
    assert 0 < turn["whole_clip_s"] < 5 and 2.0 <= turn["speech_s"] <= 3.0, turn
    assert 0 < turn["torch_bf16_s"] < 30, turn  # the bundle's checkpoint in PyTorch bf16, same clip, same run
    text = out.read_text()
    assert "| 3 |" in text and "700 ms of silence" in text and "extra buffers" in text
    row = next(line for line in text.splitlines() if line.startswith("| 3 |")).strip("|").split("|")
    assert abs(float(row[6]) - turn["torch_bf16_s"] / turn["whole_clip_s"]) < 0.01  # the ratio of the two
    proc = fa_edge("bench", "--live", bundle_f32, "--audio-seconds", "3", "--repeats", "1", "--tokens", "2",
                   "--threads", "1", "--end-silence-ms", "600", "--no-baselines", "--out", out, "--json")  # fmt: skip
    (turn,) = json.loads(proc.stdout)
    assert 0.5 <= turn["endpoint_s"] <= 1.1 and "600 ms of silence" in out.read_text(), turn  # the wait follows it
    assert turn["torch_bf16_s"] is None and "not measured (--no-baselines)" in out.read_text()
    bad = fa_edge("bench", "--live", bundle_f32, "--end-silence-ms", "150", check=False)
    assert bad.returncode == 2 and "end_silence_ms must be above speculate_ms = 200" in bad.stderr


def test_live_needs_exactly_one_bundle(bundle_f32, tmp_path):
    proc = fa_edge("bench", "--live", bundle_f32, bundle_f32, check=False)
    assert proc.returncode == 2 and "--live measures one bundle; got 2" in proc.stderr
    proc = fa_edge("bench", "--live", "--suite", "tiny", check=False)
    assert proc.returncode == 2 and "--live measures one bundle you name; --suite tiny" in proc.stderr
    proc = fa_edge("bench", "--live", tmp_path / "none", check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error:")


def test_no_pytorch_baseline_without_its_checkpoint_or_beside_a_listen_first_bundle(bundle_f32, tmp_path):
    import shutil

    from falcon_audio_edge.bench.live import LiveTurn, torch_turns

    moved = shutil.copytree(bundle_f32, tmp_path / "bundle")
    manifest = json.loads((moved / "manifest.json").read_text())
    manifest["source"]["checkpoint"] = str(tmp_path / "gone")
    (moved / "manifest.json").write_text(json.dumps(manifest))
    turns = [LiveTurn(3.0, 3.0, 1.0, 0.7, 0.5)]
    assert "gone is not on this machine" in torch_turns(moved, turns, 1, 2, 1) and turns[0].torch_bf16_s is None


def test_live_plays_the_recordings_of_a_manifest_and_names_those_the_endpointer_cut(tmp_path, bundle_f32, clips):
    import soundfile as sf

    from falcon_audio_edge.audio import load_audio

    paused = load_audio(clips["q1"]).samples  # a question with a 1.5 s pause in it: the endpointer ends it there
    sf.write(tmp_path / "paused.wav", np.concatenate([paused, np.zeros(24000, np.float32), paused]), SAMPLE_RATE)
    sf.write(tmp_path / "blip.wav", 0.01 * np.ones(1600, np.float32), SAMPLE_RATE)  # 0.1 s: never speech
    manifest = tmp_path / "m.jsonl"
    rows = [{"audio": str(clips["q0"])}, {"audio": "paused.wav", "text": "x"}, {"audio": str(clips["q2"])},
            {"audio": "blip.wav"}]  # fmt: skip
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "rec.md"

    def write(path, text):
        path.write_text(text)
        return path

    proc = fa_edge("bench", "--live", bundle_f32, "--clips", manifest, "--tokens", "2", "--threads", "1",
                   "--out", out, "--json")  # fmt: skip
    report = json.loads(proc.stdout)
    played = {t["name"]: t for t in report["turns"]}
    assert set(played) == {"q0", "q2"} and report["left_out"] == ["paused (ended in a pause)", "blip (never heard)"]
    for t in played.values():  # counted from the endpointer's end of speech: its whole end silence is waited
        assert 0.65 <= t["endpoint_s"] <= 1.5 and t["endpoint_s"] < t["gap_s"] < t["endpoint_s"] + 5, t
        assert 0.5 < t["speech_s"] <= t["clip_s"] + 0.05, t  # the silence played before it is not counted
    text = out.read_text()
    assert (
        "| q0 |" in text
        and "| q2 |" in text
        and "never heard: paused (ended in a pause)" in text
        and "recordings under 4 s" in text
    )
    # bad input: a missing manifest, a row without audio, --clips without --live, or with --audio-seconds
    for args, message in [
        (("--clips", tmp_path / "none.jsonl"), "no such manifest"),
        (("--clips", tmp_path / "rec.md"), "not a manifest row"),
        (("--clips", write(tmp_path / "null.jsonl", '{"audio": null}\n')), '"audio" must be a file path, got None'),
        (("--clips", manifest, "--audio-seconds", "3"), "--clips plays its recordings"),
    ]:
        bad = fa_edge("bench", "--live", bundle_f32, *args, check=False)
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr
    bad = fa_edge("bench", bundle_f32, "--clips", manifest, check=False)
    assert bad.returncode == 2 and "--clips is for --live" in bad.stderr

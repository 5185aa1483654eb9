"""Choosing decoding settings on the dev split: each trial is the bundle's own decoding with those settings."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from falcon_audio_edge.train.tune import Trial, best, markdown, run_trials

from falcon_audio_edge.settings import MAX_BEAM_SIZE, TRANSCRIBE_PROMPT, GenerationSettings
from falcon_audio_edge.verify import word_error_rate
from tests.conftest import QUESTIONS


@pytest.fixture
def dev(tmp_path, clips):
    rows = [{"audio": str(clips[f"q{i}"]), "instruction": TRANSCRIBE_PROMPT, "task": "transcribe",
             "text": QUESTIONS[i], "target": QUESTIONS[i], "voice": "en-us"} for i in range(2)]  # fmt: skip
    rows.append({"audio": str(clips["q2"]), "instruction": "", "task": "qa", "text": QUESTIONS[2], "target": "A."})
    path = tmp_path / "dev" / "manifest.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_each_trial_is_the_bundles_decoding_with_its_settings(dev, clips, ctc_bundle):
    from falcon_audio_edge.runtime.backend import open_bundle
    from falcon_audio_edge.verify import word_error_rate

    trials = run_trials(ctc_bundle[1], dev, [0.3, 0.9], [1, 3], (0.0, 0.01), max_tokens=6, candidates=(8,))
    settings = [(t.ctc_weight, t.beam_size, t.proposal_prob) for t in trials[:3]]
    assert settings == [(0.3, 1, 0), (0.3, 1, 0.01), (0.3, 3, 0)]
    assert len(trials) == 8
    outputs = []
    with open_bundle(ctc_bundle[1]) as chat:
        for t in trials:
            gen = GenerationSettings(max_tokens=6, ctc_weight=t.ctc_weight, beam_size=t.beam_size,
                                     ctc_proposal_prob=t.proposal_prob, ctc_candidates=t.candidates)  # fmt: skip
            hyps = []
            for i in range(2):  # the qa row is not a transcription: left out
                chat.reset()
                hyps.append(chat.ask(clips[f"q{i}"], TRANSCRIBE_PROMPT, gen).run().text)
            outputs.append(hyps)
            assert t.wer == pytest.approx(word_error_rate(QUESTIONS[:2], hyps))
            assert 0.0 <= t.exact <= 1.0 and t.seconds > 0
    assert outputs[0] != outputs[4]  # the weight reaches the decoding (random weights: the CTC head decides more)
    report = markdown(trials, ctc_bundle[1], dev, "cmd")
    assert (
        report.count("**best**") == 1 and "| 0.9 | off | 3 | 0.01 |" in report and "| 0.3 | off | 1 | off |" in report
    )


def test_the_llms_candidates_asked_for_reach_the_decoding(dev, clips, ctc_bundle):
    from falcon_audio_edge.runtime.backend import open_bundle

    trials = run_trials(ctc_bundle[1], dev, [0.9], [1], max_tokens=6, candidates=(1, 16))
    assert [t.candidates for t in trials] == [1, 16]
    heard = {}
    with open_bundle(ctc_bundle[1]) as chat:
        for k in (1, 16):
            gen = GenerationSettings(max_tokens=6, ctc_weight=0.9, beam_size=1, ctc_proposal_prob=0.0, ctc_candidates=k)
            heard[k] = []
            for i in range(2):
                chat.reset()
                heard[k].append(chat.ask(clips[f"q{i}"], TRANSCRIBE_PROMPT, gen).run().text)
    assert heard[1] != heard[16]  # the number reaches the decoding
    assert [t.wer for t in trials] == pytest.approx([word_error_rate(QUESTIONS[:2], heard[k]) for k in (1, 16)])
    report = markdown(trials, ctc_bundle[1], dev, "cmd")
    assert "| 0.9 | off | 1 | off | 16 |" in report and "| LLM candidates |" in report


def test_best_is_the_lowest_wer_then_the_most_exact_then_the_fastest():
    a, b = Trial(0.5, 0.0, 1, 0.0, 8, 0.20, 0.4, 0.5), Trial(0.7, 0.0, 4, 0.0, 8, 0.20, 0.5, 0.7)
    assert best([a, b]) == b
    assert best([a, Trial(0.7, 0.0, 1, 0.1, 8, 0.20, 0.4, 0.4)]).seconds == 0.4
    assert best([a, b, Trial(0.9, 0.0, 1, 0.0, 8, 0.19, 0.0, 9.0)]).ctc_weight == 0.9


def test_tune_command_bad_input_is_one_error_line(tmp_path, dev, bundle_f32, ctc_bundle):
    no_rows = tmp_path / "qa.jsonl"
    no_rows.write_text(json.dumps({"audio": "a.wav", "task": "qa", "text": "Hi?", "target": "Hi."}) + "\n")
    cases = [
        ([str(ctc_bundle[1]), "--dev", str(tmp_path / "none.jsonl")], "dev manifest not found"),
        ([str(ctc_bundle[1]), "--dev", str(dev), "--weights", "0.5,x"], "--weights must be a comma-separated list"),
        ([str(ctc_bundle[1]), "--dev", str(dev), "--weights", "1.5"], "ctc_weight must be a number from 0 up to"),
        (
            [str(ctc_bundle[1]), "--dev", str(dev), "--beams", str(MAX_BEAM_SIZE + 1)],
            f"beam_size must be an integer from 1 to {MAX_BEAM_SIZE}",
        ),
        ([str(ctc_bundle[1]), "--dev", str(dev), "--proposals", "-1"], "ctc_proposal_prob must be a number"),
        ([str(ctc_bundle[1]), "--dev", str(dev), "--candidates", "0"], "ctc_candidates must be an integer from 1"),
        ([str(ctc_bundle[1]), "--dev", str(dev), "--candidates", "8.5"], "--candidates must be a comma-separated"),
        ([str(ctc_bundle[1]), "--dev", str(no_rows)], "has no transcription rows"),
        ([str(bundle_f32), "--dev", str(dev)], "has no CTC head"),
    ]
    for args, message in cases:
        proc = subprocess.run([sys.executable, "-m", "falcon_audio_edge.train.tune", *args, "--out",
                               str(tmp_path / "t.md")], capture_output=True, text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert not (tmp_path / "t.md").exists()


def test_several_dev_manifests_are_scored_together_and_each_apart(tmp_path, dev, clips, ctc_bundle):
    import shutil

    other = tmp_path / "elsewhere" / "dev2" / "manifest.jsonl"  # relative audio paths, another folder
    (other.parent / "clips").mkdir(parents=True)
    shutil.copy(clips["q2"], other.parent / "clips" / "a.wav")
    row = {"audio": "clips/a.wav", "instruction": TRANSCRIBE_PROMPT, "task": "transcribe", "text": QUESTIONS[2],
           "target": QUESTIONS[2]}  # fmt: skip
    other.write_text(json.dumps(row) + "\n")
    args = ([0.9], [1])
    both = run_trials(ctc_bundle[1], [dev, other], *args, max_tokens=6, candidates=(8,))[0]
    alone = [run_trials(ctc_bundle[1], d, *args, max_tokens=6, candidates=(8,))[0] for d in (dev, other)]
    assert both.parts == pytest.approx((alone[0].wer, alone[1].wer)) and alone[0].parts == ()
    words = [len(QUESTIONS[i].split()) for i in range(3)]  # the combined WER weighs each manifest by its words
    combined = (alone[0].wer * sum(words[:2]) + alone[1].wer * words[2]) / sum(words)
    assert both.wer == pytest.approx(combined)
    report = markdown([both], ctc_bundle[1], [dev, other], "cmd")
    assert "| WER | WER on dev | WER on dev2 | transcribed word for word |" in report
    assert f"| {both.wer:.3f} **best** | {both.parts[0]:.3f} | {both.parts[1]:.3f} |" in report
    assert report.count("| --- ") == 10

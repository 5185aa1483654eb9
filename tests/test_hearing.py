"""The hearing report (train/hearing.py) through a real bundle: WER per voice family, spoken-question agreement."""

from __future__ import annotations

import json

import pytest
from falcon_audio_edge.train import hearing

from tests.conftest import QUESTIONS


@pytest.fixture
def manifest(clips, tmp_path):
    rows = [{"audio": str(clips["q0"]), "task": "transcribe", "text": QUESTIONS[0], "voice": "rhvoice-alan"},
            {"audio": str(clips["q1"]), "task": "transcribe", "text": "A statement, not a question.",
             "voice": "pico-us"},
            {"audio": str(clips["q2"]), "task": "answer", "text": QUESTIONS[2], "voice": "pico-us"}]  # fmt: skip
    path = tmp_path / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_the_report_groups_by_family_and_asks_the_questions(answer_bundle, manifest, tmp_path):
    result = hearing.evaluate(answer_bundle, [manifest], None, 1)
    rows = {r["family"]: r for r in result["rows"]}
    assert set(rows) == {"rhvoice", "svox-pico", "all"}  # the answer row is not a transcription row
    assert rows["all"]["clips"] == 2 and rows["rhvoice"]["clips"] == rows["svox-pico"]["clips"] == 1
    assert all(r["wer"] >= 0 and r["whisper_wer"] is None and r["seconds"] > 0 for r in rows.values())
    assert all(isinstance(r["phrases_wer"], float) and r["phrases_wer"] >= 0 for r in rows.values())  # listen-first
    assert rows["rhvoice"]["questions"] == 1 and 0.0 <= rows["rhvoice"]["agreement"] <= 1.0
    assert rows["svox-pico"]["questions"] == 0 and rows["svox-pico"]["agreement"] is None  # a statement asks nothing
    text = hearing.markdown(result, "python -m falcon_audio_edge.train.hearing B --split M")
    assert (
        f"| {manifest.parent.name} | **all** | 2 | {rows['all']['wer']:.3f} | {rows['all']['phrases_wer']:.3f} |"
        in text
    )


def test_a_bundle_without_an_answer_model_reports_no_agreement(bundle_f32, manifest):
    result = hearing.evaluate(bundle_f32, [manifest], None, 1)
    assert all(r["agreement"] is None and r["questions"] == 0 for r in result["rows"])
    assert all(r["phrases_wer"] is None for r in result["rows"])  # it does not listen first


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        hearing.main([str(tmp_path), "--split", str(tmp_path / "missing.jsonl")])
    assert exit_info.value.code == 2 and "manifest not found" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(SystemExit) as exit_info:
        hearing.main([str(tmp_path), "--split", str(empty)])
    assert exit_info.value.code == 2 and "no transcription rows" in capsys.readouterr().err

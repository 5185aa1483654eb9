"""How new the evaluation splits' sentences are to the training text (train/novelty.py)."""

from __future__ import annotations

import json
import sys

import pytest
from falcon_audio_edge.train import novelty, synth


def test_seen_share_counts_each_sentences_ngrams_against_the_known_ones():
    known = novelty.ngrams("The cat sat on the mat.", 2)
    assert novelty.ngrams("The cat, the CAT!", 2) == {("the", "cat"), ("cat", "the")}
    assert novelty.seen_share(["the cat sat", "a dog ran"], known, 2) == pytest.approx(2 / 4)
    assert novelty.seen_share(["one"], known, 2) == 0.0  # a sentence without pairs counts nothing


def test_dev2_statements_are_as_new_to_training_as_the_held_out_ones_and_dev_statements_are_not():
    rows = {(r.split, r.kind): r for r in novelty.novelty()}
    assert set(rows) == {(s, k) for s in ("heldout", "dev") for k in ("questions", "statements")} | {
        ("dev2", "statements")
    }
    assert rows["dev2", "statements"].sentences == 40
    assert rows["dev2", "statements"].triples_seen <= 0.05 and rows["heldout", "statements"].triples_seen <= 0.05
    assert rows["dev", "statements"].triples_seen >= 0.15  # why dev2 was written
    assert rows["dev2", "statements"].pairs_seen < rows["dev", "statements"].pairs_seen


def test_a_training_manifest_adds_what_its_clips_say(tmp_path):
    sentence = synth.read_lines("statements_dev2.txt")[0]
    manifest = tmp_path / "manifest.jsonl"
    rows = [{"audio": "a.wav", "target": sentence, "task": "transcribe", "text": sentence}, "not a row"]
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    with pytest.warns(UserWarning, match="skipped"):
        before = {(r.split, r.kind): r.triples_seen for r in novelty.novelty()}
        after = {(r.split, r.kind): r.triples_seen for r in novelty.novelty([manifest])}
    assert after["dev2", "statements"] > before["dev2", "statements"]
    assert after["heldout", "statements"] == before["heldout", "statements"]


def test_the_command_prints_a_table_and_a_missing_manifest_is_one_error_line(tmp_path):
    import subprocess

    run = [sys.executable, "-m", "falcon_audio_edge.train.novelty"]
    done = subprocess.run(run, capture_output=True, text=True, check=True)
    assert done.stdout.splitlines()[0].startswith("| split | kind | sentences |")
    assert "| dev2 | statements | 40 |" in done.stdout
    bad = subprocess.run([*run, "--train", str(tmp_path / "none.jsonl")], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: ")
    assert str(tmp_path / "none.jsonl") in bad.stderr

"""The synthetic set's voices: every one exists in espeak-ng (which would silently fall back to its default
voice otherwise), training and held-out voices never meet, and a clip comes out as 16 kHz mono speech."""

from __future__ import annotations

import itertools
import random

import pytest
import soundfile as sf
from falcon_audio_edge.train import synth

from falcon_audio_edge.audio import SAMPLE_RATE


def test_every_voice_exists_and_held_out_voices_stay_out_of_training():
    synth.check_voices()
    assert not set(synth.TRAIN_VARIANTS) & set(synth.HELDOUT_VARIANTS)
    assert not set(synth.TRAIN_ACCENTS) & set(synth.HELDOUT_ACCENTS)
    assert not set(synth.DEV_VARIANTS) & (set(synth.TRAIN_VARIANTS) | set(synth.HELDOUT_VARIANTS))


def test_the_sentence_lists_of_the_splits_never_meet():
    lists = {name: {t.lower() for t in synth.split_sentences(name)} for name in synth.SPLITS}
    assert list(lists) == ["train", "heldout", "dev", "dev2"] and all(len(v) >= 20 for v in lists.values())
    for a, b in itertools.combinations(lists, 2):
        assert not lists[a] & lists[b], (a, b)
    # generated training text avoids every other split's sentences
    assert synth.heldout_sentences() == lists["heldout"] | lists["dev"] | lists["dev2"]
    assert synth.read_lines(None) == [] and synth.SPLITS["dev2"].variants == synth.DEV_VARIANTS


def test_a_misspelled_voice_is_an_error_naming_it(monkeypatch):
    with pytest.raises(RuntimeError, match=r"no voice or variant \['m99', 'en-xx'\]"):
        synth.check_voices(["m1", "m99"], ["en-us", "en-xx"])
    monkeypatch.setattr(synth, "TRAIN_VARIANTS", [*synth.TRAIN_VARIANTS, "f4"])
    with pytest.raises(RuntimeError, match=r"\['f4'\] are in two of"):
        synth.check_voices()


@pytest.mark.parametrize("split", ["train", "heldout", "dev"])
def test_speak_writes_16k_mono_speech(tmp_path, split):
    rng = random.Random(3)
    voice = synth.random_voice(rng, split)
    seconds = synth.speak("The train leaves at seven.", voice, tmp_path / "a.wav", rng, augment=split == "train")
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


def test_synth_split_bad_input_is_one_error_line_and_writes_nothing(tmp_path):
    from tests.conftest import fa_edge

    data = tmp_path / "data"
    proc = fa_edge("synth", "-o", data, "--llm", tmp_path / "x.gguf", "--split", "test", check=False)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last == "error: unknown split ['test']; choose from ['train', 'heldout', 'dev', 'dev2']"
    assert not data.exists()
    dev_question = synth.read_lines("questions_dev.txt")[3]
    (data / "train").mkdir(parents=True)
    rows = ["not json", {"audio": "a.wav", "target": "x", "text": "Hello there."},
            {"audio": "b.wav", "target": dev_question, "task": "transcribe"}]  # fmt: skip
    _rows(data / "train" / "manifest.jsonl", rows)
    proc = fa_edge("synth", "-o", data, "--llm", tmp_path / "x.gguf", "--split", "dev", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: 1 dev sentences are spoken in {data / 'train'}")
    assert dev_question in proc.stderr and not (data / "dev").exists()


def _rows(path, rows):
    import json

    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_respeak_speaks_every_row_again_with_training_voices(tmp_path):
    import json

    from falcon_audio_edge.train.data import read_manifest
    from falcon_audio_edge.train.grow import respeak

    from falcon_audio_edge.config import preset_dims

    rows = [
        {"audio": "clips/a.wav", "instruction": "Transcribe the audio.", "target": "The train leaves at seven.",
         "task": "transcribe", "voice": "en-us", "text": "The train leaves at seven."},
        {"audio": "clips/b.wav", "instruction": "", "target": "Blue.", "task": "qa", "text": "What colour is the sky?"},
        {"audio": "clips/c.wav", "instruction": "", "target": "An answer without its question's text.", "task": "qa"},
        "not json",
    ]  # fmt: skip
    with pytest.warns(UserWarning, match=r"skipped 2 rows \(1 no spoken text .*, 1 not valid JSON\)"):
        manifest = respeak(_rows(tmp_path / "in.jsonl", rows), tmp_path / "out", copies=2, seed=5)
    new = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [(r["target"], r["instruction"], r["task"]) for r in new] == [
        (r["target"], r["instruction"], r["task"]) for r in rows[:2] for _ in range(2)
    ]
    assert [r["text"] for r in new] == ["The train leaves at seven."] * 2 + ["What colour is the sky?"] * 2
    assert all(r["voice"].split("+")[0] in synth.TRAIN_ACCENTS for r in new)
    assert new[0]["audio"] != new[1]["audio"] and (new[0]["rate"], new[0]["pitch"]) != (new[1]["rate"], new[1]["pitch"])
    examples = read_manifest(manifest, preset_dims("tiny"))
    assert len(examples) == 4 and all(0.5 < sf.info(str(tmp_path / "out" / r["audio"])).duration < 4 for r in new)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out-")]  # no temporary folder left


def test_respeak_questions_reads_manifests_in_order_and_keeps_spoken_questions_only(tmp_path):
    import json

    from falcon_audio_edge.train.grow import respeak

    from falcon_audio_edge.errors import ConfigError

    first = _rows(tmp_path / "a.jsonl", [
        {"audio": "a.wav", "instruction": "Transcribe the audio.", "target": "Where do otters sleep?",
         "task": "transcribe", "text": "Where do otters sleep?"},
        {"audio": "b.wav", "instruction": "Transcribe the audio.", "target": "Otters sleep in water.",
         "task": "transcribe", "text": "Otters sleep in water."},
        {"audio": "c.wav", "instruction": "", "target": "In rivers.", "task": "qa", "text": "Where do otters live?"},
    ])  # fmt: skip
    second = _rows(tmp_path / "b.jsonl", [
        {"audio": "d.wav", "instruction": "Write down exactly what was said.", "target": "Can owls see colours? ",
         "task": "transcribe", "text": "Can owls see colours? "},
    ])  # fmt: skip
    manifest = respeak([first, second], tmp_path / "out", copies=2, seed=3, questions=True)
    new = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [r["text"] for r in new] == ["Where do otters sleep?"] * 2 + ["Can owls see colours?"] * 2  # spoken stripped
    assert [r["instruction"] for r in new[::2]] == ["Transcribe the audio.", "Write down exactly what was said."]
    everything = respeak([first, second], tmp_path / "all", seed=3)  # without --questions: every row, in order
    assert len(everything.read_text().splitlines()) == 4
    statements = _rows(tmp_path / "s.jsonl", [json.loads(first.read_text().splitlines()[1])])
    with pytest.raises(ConfigError, match=r"s.jsonl: no transcription rows of questions \(text ending in '\?'\)"):
        respeak(statements, tmp_path / "none", questions=True)
    assert not (tmp_path / "none").exists()


def test_respeak_refuses_held_out_sentences_and_an_existing_folder(tmp_path):
    from falcon_audio_edge.train.grow import respeak

    from falcon_audio_edge.errors import ConfigError

    heldout = synth.read_lines("questions_heldout.txt")[0]
    bad = _rows(tmp_path / "in.jsonl", [{"audio": "a.wav", "target": "x", "text": heldout, "task": "qa"}])
    with pytest.raises(ConfigError, match=r"1 rows speak held-out sentences \(e.g. '.+'\)"):
        respeak(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists() and len(list(tmp_path.iterdir())) == 1
    (tmp_path / "out").mkdir()
    with pytest.raises(ConfigError, match="already exists"):
        respeak(bad, tmp_path / "out")
    with pytest.raises(ConfigError, match="no rows with spoken text"):
        respeak(_rows(tmp_path / "empty.jsonl", [{"audio": "a.wav", "target": "x"}]), tmp_path / "out2")
    with pytest.raises(ConfigError, match="--copies must be an integer >= 1, got 0"):
        respeak(bad, tmp_path / "out3", copies=0)


def test_respeak_command_bad_input_is_one_error_line(tmp_path):
    from tests.conftest import fa_edge

    proc = fa_edge("respeak", tmp_path / "missing.jsonl", "-o", tmp_path / "out", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"error: manifest not found: {tmp_path / 'missing.jsonl'}"
    assert not (tmp_path / "out").exists()
    statements = _rows(tmp_path / "s.jsonl", [{"audio": "a.wav", "target": "Owls sleep.", "task": "transcribe"}])
    proc = fa_edge("respeak", statements, tmp_path / "missing.jsonl", "-o", tmp_path / "out", check=False)
    assert proc.returncode == 2 and proc.stderr.strip().endswith(f"manifest not found: {tmp_path / 'missing.jsonl'}")
    proc = fa_edge("respeak", statements, "--questions", "-o", tmp_path / "out", check=False)
    assert proc.returncode == 2 and "no transcription rows of questions" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()


def test_synth_words_speaks_random_sequences_over_common_words(tmp_path):
    import json

    from falcon_audio_edge.train.grow import random_word_set

    from tests.conftest import smollm2_gguf

    manifest = random_word_set(tmp_path / "words", smollm2_gguf(), clips=6, common=3000, seed=4)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert len(rows) == 6 and all(r["task"] == "transcribe" and r["target"] == r["text"] for r in rows)
    assert all(r["instruction"] in synth.TRANSCRIBE_PROMPTS and 3 <= len(r["text"].split()) <= 8 for r in rows)
    assert len({r["text"] for r in rows}) == 6 and all(r["voice"].split("+")[0] in synth.TRAIN_ACCENTS for r in rows)
    assert all(sf.info(str(tmp_path / "words" / r["audio"])).samplerate == SAMPLE_RATE for r in rows)


@pytest.mark.slow
def test_synth_words_rare_words_widen_the_draw_and_none_keeps_the_old_draw(tmp_path, monkeypatch):
    from pathlib import Path

    from falcon_audio_edge.train import grow

    from tests.conftest import smollm2_gguf

    said: dict[str, list[str]] = {}

    def texts(name, rare):  # the sentences only: no clip is spoken
        monkeypatch.setattr(grow, "speak_rows", lambda rows, out, rng, shares: said.setdefault(name, rows) and out)
        grow.random_word_set(tmp_path / name, smollm2_gguf(), clips=300, common=300, seed=4, rare=rare)
        return [r["text"] for r in said[name]]

    plain, wide = texts("plain", 0), texts("wide", 5000)
    dictionary = set(Path("/usr/share/dict/words").read_text(errors="replace").split())
    new = {w for s in wide for w in s.split()} - {w for s in plain for w in s.split()}
    assert len(new) > 300 and new <= dictionary  # most draws are dictionary words beyond the common ones now
    assert texts("plain2", 0) == plain  # without --rare-words the draw is as it was


def test_sampled_answers_repeat_with_the_seed_vary_without_it_and_turn_greedy_when_cold():
    import numpy as np
    from falcon_audio_edge.train.textgen import TextAnswers

    from falcon_audio_edge.tokenizer import tokenizer_from_gguf
    from tests.conftest import smollm2_gguf

    tokenizer, _ = tokenizer_from_gguf(smollm2_gguf())
    answers = TextAnswers.for_tokenizer(smollm2_gguf(), tokenizer, max_tokens=24)
    try:
        prompt = 'Write two short everyday sentences that use the word "kettle".'
        drawn = [answers.sample(prompt, np.random.default_rng(seed)) for seed in (1, 2, 3, 1)]
        assert drawn[0] == drawn[3] and len(set(drawn)) >= 2 and all(drawn)
        assert answers.sample(prompt, np.random.default_rng(5), temperature=1e-3) == answers.answer(prompt)
        started = answers.sample("Ask one short general knowledge question.", np.random.default_rng(1), start="Who")
        assert started.startswith("Who ") and len(started.split()) > 2  # the LLM went on from the given start
    finally:
        answers.decoder.close()


def test_synth_sentences_speaks_new_sentences_the_llm_writes(tmp_path):
    import json

    from falcon_audio_edge.train.grow import sentence_set

    from tests.conftest import smollm2_gguf

    said: list[str] = []
    manifest = sentence_set(tmp_path / "sentences", smollm2_gguf(), 4, 300, seed=4, progress=said.append)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert said == ["0/4 prompts answered, 0 sentences kept", f"{len(rows)} sentences from 4 prompts; speaking them"]
    avoid = synth.heldout_sentences() | {t.lower() for t in synth.split_sentences("train")}
    assert rows and all(r["task"] == "transcribe" and r["target"] == r["text"] for r in rows)
    assert all(r["text"].lower() not in avoid and 4 <= len(r["text"].split()) <= 22 for r in rows)
    assert len({r["text"] for r in rows}) == len(rows) and all(
        r["instruction"] in synth.TRANSCRIBE_PROMPTS for r in rows
    )
    assert all(sf.info(str(tmp_path / "sentences" / r["audio"])).samplerate == SAMPLE_RATE for r in rows)


def test_synth_sentences_questions_keeps_only_questions(tmp_path):
    import json

    from falcon_audio_edge.train.grow import sentence_set

    from tests.conftest import smollm2_gguf

    said: list[str] = []
    manifest = sentence_set(tmp_path / "q", smollm2_gguf(), 6, 300, seed=2, progress=said.append, questions=True)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert said[-1] == f"{len(rows)} questions from 6 prompts; speaking them"
    avoid = synth.heldout_sentences() | {t.lower() for t in synth.split_sentences("train")}
    assert rows and all(r["text"].endswith("?") and r["text"].lower() not in avoid for r in rows)
    assert all(r["task"] == "transcribe" and r["target"] == r["text"] for r in rows)


def test_synth_sentences_first_words_begin_every_question(tmp_path, monkeypatch):
    from falcon_audio_edge.train import grow

    from tests.conftest import smollm2_gguf

    rows: list[dict] = []
    monkeypatch.setattr(grow, "speak_rows", lambda got, out, rng, shares: rows.extend(got) or out)  # text only
    grow.sentence_set(tmp_path / "q", smollm2_gguf(), 8, 300, seed=3, questions=True, first_words=("Who", "Where"))
    assert len(rows) >= 2 and all(r["text"].endswith("?") for r in rows)
    assert all(r["text"].split()[0] in ("Who", "Where") for r in rows)


def test_synth_sentences_bad_input_is_one_error_line_and_writes_nothing(tmp_path):
    from tests.conftest import fa_edge, smollm2_gguf

    def last_line(*args):
        proc = fa_edge("synth-sentences", "-o", tmp_path / "s", *args, check=False)
        return proc.returncode, proc.stderr.strip().splitlines()[-1]

    assert last_line("--llm", tmp_path / "no.gguf") == (2, f"error: --llm {tmp_path / 'no.gguf'}: no such GGUF file")
    assert last_line("--llm", smollm2_gguf(), "--prompts", "0") == (
        2,
        "error: --prompts must be an integer >= 1, got 0",
    )
    for bad in ("0", "2.5"):
        assert last_line("--llm", smollm2_gguf(), "--temperature", bad) == (
            2,
            f"error: --temperature must be a number above 0 and at most 2, got {float(bad)!r}",
        )
    assert last_line("--llm", smollm2_gguf(), "--accents", "1.5") == (
        2,
        "error: --accents must be a share from 0 to 1, got 1.5",
    )
    for bad in ("who", "Who is", "Who?"):
        assert last_line("--llm", smollm2_gguf(), "--questions", "--first-word", "Why", "--first-word", bad) == (
            2,
            f"error: --first-word must be one word that starts with a capital letter, got {bad!r}",
        )
    assert list(tmp_path.iterdir()) == []


def test_synth_words_bad_input_is_one_error_line_and_writes_nothing(tmp_path):
    from tests.conftest import fa_edge, smollm2_gguf

    def last_line(*args):
        proc = fa_edge("synth-words", "-o", tmp_path / "w", *args, check=False)
        return proc.returncode, proc.stderr.strip().splitlines()[-1]

    assert last_line("--llm", tmp_path / "no.gguf") == (2, f"error: --llm {tmp_path / 'no.gguf'}: no such GGUF file")
    assert last_line("--llm", smollm2_gguf(), "--clips", "0") == (2, "error: --clips must be an integer >= 1, got 0")
    assert last_line("--llm", smollm2_gguf(), "--rare-words", "-1") == (
        2,
        "error: --rare-words must be an integer >= 0, got -1",
    )
    assert last_line("--llm", smollm2_gguf(), "--rare-words", "999999")[1].startswith(
        "error: --rare-words 999999: /usr/share/dict/words has only "
    )
    assert list(tmp_path.iterdir()) == []


def test_respeak_failing_midway_leaves_nothing(tmp_path, monkeypatch):
    from falcon_audio_edge.train import grow

    rows = [{"audio": "a.wav", "target": f"Sentence number {n}.", "task": "transcribe"} for n in ("one", "two")]
    spoken = []

    def speak(text, *args, **kwargs):
        spoken.append(text)
        if len(spoken) == 2:
            raise RuntimeError("espeak-ng died")
        return synth.speak(text, *args, **kwargs)

    monkeypatch.setattr(grow, "speak", speak)
    with pytest.raises(RuntimeError, match="espeak-ng died"):
        grow.respeak(_rows(tmp_path / "in.jsonl", rows), tmp_path / "out")
    assert spoken == ["Sentence number one.", "Sentence number two."]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]  # no folder, no temporary one


@pytest.mark.parametrize("split", ["heldout", "dev", "dev2"])
def test_a_split_speaks_every_planned_clip_with_its_voices_and_reports_progress(tmp_path, split):
    import json

    class Echo:  # stands in for the LLM: the targets of spoken questions are its answers to the typed text
        def answer(self, text: str) -> str:
            return f"answer to {text}"

    messages: list[str] = []
    manifest = synth.build_split(tmp_path / split, split, Echo(), seed=1, voices_per_question=1,
                                 progress=messages.append)  # fmt: skip
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert len(rows) == len(list(synth.plan(split, random.Random(1), 1))) >= 80
    assert messages[0] == f"{split}: 0/{len(rows)} clips spoken"
    assert all(r["voice"].split("+")[0] in synth.HELDOUT_ACCENTS for r in rows)
    assert {r["voice"].split("+")[1] for r in rows} <= set(synth.SPLITS[split].variants)
    spoken = {r["text"].lower() for r in rows}
    assert spoken <= synth.heldout_sentences() and {r["instruction"] for r in rows} <= {"", "Transcribe the audio."}
    assert all(r["target"] == (r["text"] if r["task"] == "transcribe" else f"answer to {r['text']}") for r in rows)
    for row in rows[:: len(rows) // 5]:
        audio, rate = sf.read(str(manifest.parent / row["audio"]))
        assert rate == SAMPLE_RATE and abs(len(audio) / rate - row["seconds"]) < 0.01 and row["seconds"] > 0.5

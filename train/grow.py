"""Growing a training set cheaply: more voices for its sentences (respeak), more words (random sequences).

    fa-edge respeak DATA/train/manifest.jsonl -o DATA/train-respoken --copies 2 --seed 1

The sentences, instructions and targets stay (no LLM is needed: the targets were written once by
``fa-edge synth``); each copy of a row gets a fresh random training voice, rate, pitch and augmentation.
Acoustic variety is what the held-out voices test, and espeak-ng speaks a clip in tens of milliseconds,
so this is the cheap way to grow a set. A row whose sentence is a held-out one is refused (it would leak
the held-out split into training). The output folder appears whole or not at all.

    fa-edge synth-words -o DATA/words --llm SmolLM2.gguf --clips 12000 --common-words 10000

More text, not only more voices: transcription clips of random word sequences over the LLM tokenizer's
commonest dictionary words (names of places, months and people included) and the training lists' words (no
LLM run, the tokenizer only). A model trained on
a few thousand sentences learns them by heart (its CTC reading of training clips is far better than of
held-out sentences in the same voices); random sequences cannot be learned by heart, only heard.

    fa-edge synth-sentences -o DATA/sentences --llm SmolLM2.gguf --prompts 2400 --seed 13

New sentences rather than word salad: the LLM samples (temperature 0.8) a sentence or two around each of
``--prompts`` words drawn from its tokenizer's commonest ones; each clean sentence (textgen.split_sentences) that
is not a held-out, dev or training-list sentence is spoken once. ``--questions`` asks for questions instead
(textgen.QUESTION_PROMPTS) and keeps only sentences ending in "?": the spoken questions listen-first turns hear.
``--first-word Who --first-word Where`` makes each answer begin with one of the given words (drawn per prompt) and
keeps only sentences that begin with it: questions of the kinds the LLM seldom asks unprompted.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
from falcon_audio_edge.train.accent import MAX_MOVES, accent_shift, draw_consonants, phonemes
from falcon_audio_edge.train.data import manifest_rows, spoken_text, warn_skipped
from falcon_audio_edge.train.flite import ENGINE as FLITE
from falcon_audio_edge.train.flite import TRAIN_VOICES as FLITE_TRAIN_VOICES
from falcon_audio_edge.train.flite import check_flite
from falcon_audio_edge.train.synth import (
    TRAIN_VARIANTS,
    TRANSCRIBE_PROMPTS,
    check_llm,
    check_voices,
    engine_voice,
    espeak_data,
    heldout_sentences,
    random_voice,
    speak,
    split_sentences,
)
from falcon_audio_edge.train.textgen import (
    TextAnswers,
    common_words,
    dictionary_words,
    is_question,
    random_word_sentences,
    vocabulary,
    word_prompt_sentences,
)
from falcon_audio_edge.train.voices import VoiceBank

from falcon_audio_edge.errors import ConfigError
from falcon_audio_edge.files import atomic_text, staged_dir


def read_rows(manifest: Path) -> list[dict]:
    """The rows that can be spoken again; the others are skipped with a count, none left is an error."""
    rows, skipped = [], Counter()
    for _, row in manifest_rows(manifest, skipped):
        if spoken_text(row) is None:
            skipped["no spoken text (text, or a transcription target)"] += 1
        else:
            rows.append(row)
    warn_skipped(manifest, skipped)
    if not rows:
        raise ConfigError(f"{manifest}: no rows with spoken text to respeak")
    heldout = heldout_sentences()
    leaked = [spoken_text(r) for r in rows if spoken_text(r).lower() in heldout]
    if leaked:
        raise ConfigError(
            f"{manifest}: {len(leaked)} rows speak held-out sentences (e.g. {leaked[0]!r}); respeak makes "
            "training data, give it a training manifest (nothing was written)"
        )
    return rows


def respeak(
    manifest: str | Path | list[str | Path],
    out: str | Path,
    copies: int = 1,
    seed: int = 0,
    accents: float = 0.0,
    voices: float = 0.0,
    consonants: float = 0.0,
    flite: float = 0.0,
    questions: bool = False,
) -> Path:
    """Write out/clips/*.wav and out/manifest.jsonl: ``copies`` new clips of every usable row of ``manifest`` (one
    or several, in order); returns the manifest. ``questions``: only the transcription rows that speak a question
    (text ending in "?"). ``accents``: the share of clips spoken with a synthetic accent (train/accent.py);
    ``voices``: the share spoken by a synthetic voice variant (train/voices.py); ``consonants``: each consonant
    feature's chance in an accented clip (train/accent.py CONSONANT_FEATURES); ``flite``: the share spoken by a
    flite training voice (train/flite.py)."""
    manifests = [Path(m) for m in (manifest if isinstance(manifest, list | tuple) else [manifest])]
    out = Path(out)
    if not isinstance(copies, int) or copies < 1:
        raise ConfigError(f"--copies must be an integer >= 1, got {copies!r}")
    shares = Shares(accents, voices, consonants, flite)
    check_new_folder(out)
    rows = [r for m in manifests for r in read_rows(m)]
    if questions:
        rows = [r for r in rows if r.get("task") == "transcribe" and is_question(spoken_text(r))]
        if not rows:
            names = ", ".join(map(str, manifests))
            raise ConfigError(f"{names}: no transcription rows of questions (text ending in '?') to respeak")
    return speak_rows([r for r in rows for _ in range(copies)], out, random.Random(seed), shares)


def random_word_set(
    out: str | Path,
    llm: str | Path,
    clips: int,
    common: int = 10000,
    seed: int = 0,
    accents: float = 0.0,
    voices: float = 0.0,
    consonants: float = 0.0,
    flite: float = 0.0,
    rare: int = 0,
) -> Path:
    """Transcription clips of random word sequences (3-8 words) in training voices; returns the manifest. ``rare``
    more words come from the whole dictionary (textgen.dictionary_words), drawn with the seed."""
    from falcon_audio_edge.tokenizer import tokenizer_from_gguf

    out = Path(out)
    for name, value, least in (("--clips", clips, 1), ("--common-words", common, 1), ("--rare-words", rare, 0)):
        if not isinstance(value, int) or value < least:
            raise ConfigError(f"{name} must be an integer >= {least}, got {value!r}")
    shares = Shares(accents, voices, consonants, flite)
    check_new_folder(out)
    check_llm(llm)
    tokenizer, _ = tokenizer_from_gguf(llm)
    words = set(common_words(tokenizer.get_vocab(), common, names=True))
    words |= set(vocabulary(split_sentences("train")))
    rng = random.Random(seed)
    if rare:  # drawn only when asked: a set made without them draws as before
        words |= set(dictionary_words(rng, rare))
    return speak_rows(transcription_rows(rng, random_word_sentences(rng, sorted(words), clips)), out, rng, shares)


def transcription_rows(rng: random.Random, texts: list[str]) -> list[dict]:
    """A transcription row per text, each with a training transcription prompt drawn from ``rng``."""
    return [
        {"instruction": rng.choice(TRANSCRIBE_PROMPTS), "target": s, "task": "transcribe", "text": s} for s in texts
    ]


FIRST_WORD = re.compile(r"[A-Z][A-Za-z]*(?:'[a-z]+)?")  # a sentence's first word: "Who", "Where's"


def sentence_set(
    out: str | Path,
    llm: str | Path,
    prompts: int,
    common: int = 5000,
    seed: int = 0,
    temperature: float = 0.8,
    shares: Shares | None = None,
    progress: Callable[[str], None] = lambda message: None,
    questions: bool = False,
    first_words: tuple[str, ...] = (),
) -> Path:
    """Transcription clips of sentences the LLM writes, sampled, around ``prompts`` words drawn from its
    tokenizer's ``common`` commonest words (names too): new word sequences in plain sentences, where random
    word sequences have none. None equals a held-out or dev sentence or a training list's. ``questions``: the LLM
    is asked for questions and only those are kept (spoken questions are what listen-first hears).
    ``first_words``: each answer begins with one of them, drawn per prompt, and only sentences that begin with it
    are kept (textgen.word_prompt_sentences). Returns the manifest."""
    from falcon_audio_edge.tokenizer import tokenizer_from_gguf

    out = Path(out)
    for name, value in (("--prompts", prompts), ("--common-words", common)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not 0 < temperature <= 2:
        raise ConfigError(f"--temperature must be a number above 0 and at most 2, got {temperature!r}")
    for word in first_words:
        if not FIRST_WORD.fullmatch(word):
            raise ConfigError(f"--first-word must be one word that starts with a capital letter, got {word!r}")
    shares = shares or Shares()
    check_new_folder(out)
    check_llm(llm)
    check_voices()
    tokenizer, _ = tokenizer_from_gguf(llm)
    words = common_words(tokenizer.get_vocab(), common, names=True)
    avoid = heldout_sentences() | {t.lower() for t in split_sentences("train")}
    rng, draws = random.Random(seed), np.random.default_rng(seed)
    answers = TextAnswers.for_tokenizer(Path(llm), tokenizer)
    try:
        sample = lambda prompt, start="": answers.sample(prompt, draws, temperature, start=start)  # noqa: E731
        sentences = word_prompt_sentences(sample, words, prompts, rng, avoid, progress, questions, first_words)
    finally:
        answers.decoder.close()
    kind = "question" if questions else "sentence"
    if not sentences:
        raise ConfigError(f"{llm}: {prompts} prompts gave no clean {kind} (nothing was written)")
    progress(f"{len(sentences)} {kind}s from {prompts} prompts; speaking them")
    return speak_rows(transcription_rows(rng, sentences), out, rng, shares)


@dataclass(frozen=True)
class Shares:
    """How often the synthetic changes happen, each 0-1: ``accents`` of the clips get a synthetic accent
    (train/accent.py), ``voices`` a synthetic voice variant (train/voices.py), and each consonant feature comes
    into an accented clip with chance ``consonants``; ``flite`` of the clips are spoken by a flite training voice
    instead (train/flite.py: another engine, with no accent or variant of espeak-ng's)."""

    accents: float = 0.0
    voices: float = 0.0
    consonants: float = 0.0
    flite: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            share = getattr(self, f.name)
            if isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share <= 1:
                raise ConfigError(f"--{f.name} must be a share from 0 to 1, got {share!r}")


def check_new_folder(out: Path) -> None:
    if out.exists():
        raise ConfigError(f"{out} already exists; this writes a new folder (remove it or pick another)")


def speak_rows(rows: list[dict], out: Path, rng: random.Random, shares: Shares) -> Path:
    """Each row spoken by a random training voice (augmented) into a new folder that appears whole or not at all;
    ``shares.voices`` of them by a synthetic variant instead of a training one."""
    check_voices()
    if shares.flite:
        check_flite()
    with (
        staged_dir(out, force=False) as tmp,
        VoiceBank(espeak_data(), TRAIN_VARIANTS) if shares.voices else nullcontext() as bank,
    ):
        (tmp / "clips").mkdir()
        new = [speak_row(row, tmp / "clips" / f"{i:06d}.wav", rng, shares, bank) for i, row in enumerate(rows)]
        atomic_text(tmp / "manifest.jsonl", "".join(json.dumps(r) + "\n" for r in new))
    return out / "manifest.jsonl"


def speak_row(row: dict, clip: Path, rng: random.Random, shares: Shares, bank: VoiceBank | None) -> dict:
    """Speak one row into ``clip``; returns its manifest row (with how the voice and accent were made)."""
    espeak = not (shares.flite and rng.random() < shares.flite)  # flite: none of espeak-ng's changes apply
    voice, made = random_voice(rng, "train") if espeak else engine_voice(FLITE, rng, FLITE_TRAIN_VOICES), None
    if espeak and bank is not None and rng.random() < shares.voices:  # a synthetic variant, not the drawn one
        variant, made = bank.draw(rng)
        voice = replace(voice, variant=variant, data_path=bank.path)
    text, moves, features = spoken_text(row), {}, ()
    if espeak and shares.accents and rng.random() < shares.accents:  # an accent: espeak-ng speaks moved phonemes
        n_moves, features = rng.randint(1, MAX_MOVES), draw_consonants(rng, shares.consonants)
        text, moves = accent_shift(phonemes(text, voice.name, voice.data_path), rng, n_moves, features)
    seconds = speak(text, voice, clip, rng, augment=True)
    return {
        **row, "audio": f"clips/{clip.name}", "text": spoken_text(row), **voice.row(), "seconds": round(seconds, 3),
        **({"accent_moves": len(moves)} if moves else {}),
        **({"accent_consonants": list(features)} if features else {}),
        **({"synthetic_voice": made.row()} if made else {}),
    }  # fmt: skip

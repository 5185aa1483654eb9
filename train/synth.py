"""An offline synthetic speech instruction set: espeak-ng voices, the LLM's own answers as targets.

Sentences come from the hand-written lists in ``train/sentences/`` (questions on many topics and everyday
statements; the ``*_heldout.txt`` lists never reach training) and, for training only, from the text of
``train/textgen.py``: sentences and questions the LLM writes about the topics in ``topics.txt``, and random
word sequences (they teach listening: no language model can guess them). Each clip is spoken by espeak-ng with an
accent, a voice variant, a rate and a pitch, and may get gain and white noise. Held-out clips use accents
and variants that training never hears. The dev split (for tuning decoding settings, never for training) has
sentences of its own (``*_dev.txt``) in the held-out accents with voice variants of its own, so the held-out
split stays a test that nothing was chosen on. The dev2 split is statements only (``statements_dev2.txt``), as
new to the training text as the held-out statements are (``python -m falcon_audio_edge.train.novelty``): the dev
statements share many word pairs and triples with the training lists, the held-out ones almost none.

Tasks (one JSONL row each: audio, instruction, target):
- transcribe: "Transcribe the audio." (or another wording) -> the sentence.
- spoken QA: no instruction, the question is only in the audio -> the LLM's answer to the text question.
- instruct: a text instruction about what was said -> the LLM's answer with the sentence as text.
Targets for the last two come from the LLM itself (behaviour alignment): the same chat layout, with the
sentence's text where the audio embeddings will be.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from falcon_audio_edge.train.data import manifest_rows, spoken_text, warn_skipped
from falcon_audio_edge.train.textgen import (
    TextAnswers,
    common_words,
    generated_questions,
    generated_sentences,
    random_word_sentences,
    vocabulary,
)

from falcon_audio_edge.audio import SAMPLE_RATE, load_audio
from falcon_audio_edge.errors import ConfigError, FaEdgeError, SetupError
from falcon_audio_edge.files import atomic_text

SENTENCES = Path(__file__).parent / "sentences"
TRAIN_ACCENTS = ["en-us", "en-gb", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc"]
# espeak-ng's voice variants (voices/!v): the numbered ones and the named people; not the effects (whisper,
# croak, robots, Demonic) and never the held-out ones.
TRAIN_VARIANTS = [
    "", "m1", "m2", "m3", "m4", "m5", "m6", "m8", "f1", "f2", "f3", "klatt", "klatt2", "klatt3", "klatt4",
    "Alex", "Andy", "Annie", "adam", "anika", "announcer", "aunty", "belinda", "benjamin", "boris", "caleb",
    "david", "ed", "edward", "grandma", "grandpa", "iven", "john", "linda", "max", "michel", "norbert", "paul",
    "quincy", "rob", "robert", "shelby", "steph", "travis", "victor", "zac", "Jacky", "Lee", "Michael", "Mike",
]  # fmt: skip
HELDOUT_ACCENTS = ["en-gb-x-gbclan", "en-gb-x-gbcwmd"]
HELDOUT_VARIANTS = ["m7", "f4", "f5"]
DEV_VARIANTS = ["edward2", "steph2", "klatt5"]  # the dev split: held-out accents, variants of its own
RATES = (130, 200)  # words a minute, drawn for every clip of every engine


@dataclass(frozen=True)
class Split:
    """Where a split's sentences and voices come from."""

    name: str
    accents: list[str]
    variants: list[str]
    questions: str | None  # file in train/sentences/ (None: no questions)
    statements: str
    seed_offset: int  # added to the dataset's seed: each split draws its own voices

    @property
    def training(self) -> bool:
        return self.name == "train"


SPLITS = {
    "train": Split("train", TRAIN_ACCENTS, TRAIN_VARIANTS, "questions.txt", "statements.txt", 0),
    "heldout": Split(
        "heldout", HELDOUT_ACCENTS, HELDOUT_VARIANTS, "questions_heldout.txt", "statements_heldout.txt", 1
    ),
    "dev": Split("dev", HELDOUT_ACCENTS, DEV_VARIANTS, "questions_dev.txt", "statements_dev.txt", 2),
    # dev's voices, statements as new to the training lists as the held-out ones (dev's are not: train/novelty.py)
    "dev2": Split("dev2", HELDOUT_ACCENTS, DEV_VARIANTS, None, "statements_dev2.txt", 3),
}
TRANSCRIBE_PROMPTS = [
    "Transcribe the audio.",
    "Transcribe the audio.",
    "Write down exactly what was said.",
    "What did the speaker say? Give the exact words.",
]
INSTRUCTIONS = [
    "Summarize what was said in a few words.",
    "What is the main topic of what was said?",
    "Is the speaker asking a question? Answer yes or no.",
    "How would you reply to this?",
    "Rewrite what was said in a more formal way.",
    "List the most important words in what was said.",
]


def read_lines(name: str | None) -> list[str]:
    """A sentence list's lines (None: a split without that list)."""
    if name is None:
        return []
    return [line.strip() for line in (SENTENCES / name).read_text().splitlines() if line.strip()]


def split_sentences(split: str) -> list[str]:
    """A split's hand-written questions and statements."""
    return read_lines(SPLITS[split].questions) + read_lines(SPLITS[split].statements)


def heldout_sentences() -> set[str]:
    """Every split's sentences but training's, lower-cased: text that must never reach training."""
    return {s.lower() for split in SPLITS if not SPLITS[split].training for s in split_sentences(split)}


def engine_output(command: list[str]) -> str:
    """stdout of a speech engine's query (its version, its voice list); a failure is a SetupError naming the
    command, its exit status and stderr, not a traceback."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, errors="replace")
    except OSError as exc:
        raise SetupError(f"{command[0]} could not run: {exc}") from None
    if done.returncode:
        raise SetupError(f"`{' '.join(command)}` failed (exit status {done.returncode}): {done.stderr.strip()[-300:]}")
    return done.stdout


def espeak_data() -> Path:
    """The installed espeak-ng's data folder (voices/!v holds the variants)."""
    version = engine_output(["espeak-ng", "--version"])
    found = re.search(r"Data at: (.+)$", version.strip())
    if not found:
        raise SetupError(f"espeak-ng --version does not say where its data is: {version!r}")
    return Path(found.group(1).strip())


def check_voices(variants: list[str] | None = None, accents: list[str] | None = None) -> None:
    """Every voice this set names must exist in espeak-ng: it silently falls back to its default voice on an
    unknown one, which would make the held-out voices a claim instead of a fact. Train and held-out stay apart."""
    variants = TRAIN_VARIANTS + HELDOUT_VARIANTS + DEV_VARIANTS if variants is None else variants
    accents = TRAIN_ACCENTS + HELDOUT_ACCENTS if accents is None else accents
    folder = espeak_data() / "voices" / "!v"
    listed = engine_output(["espeak-ng", "--voices=en"])
    known = {line.split()[1] for line in listed.splitlines()[1:] if len(line.split()) > 1}
    missing = [v for v in variants if v and not (folder / v).is_file()] + [a for a in accents if a not in known]
    if missing:
        raise SetupError(f"espeak-ng has no voice or variant {missing} (looked in {folder} and --voices=en)")
    unseen = set(HELDOUT_VARIANTS) | set(DEV_VARIANTS)
    shared = (set(TRAIN_VARIANTS) & unseen) | (set(TRAIN_ACCENTS) & set(HELDOUT_ACCENTS))
    shared |= set(HELDOUT_VARIANTS) & set(DEV_VARIANTS)
    if shared:
        raise SetupError(f"voices {sorted(shared)} are in two of the training, held-out and dev lists")


@dataclass(frozen=True)
class Voice:
    accent: str
    variant: str
    rate: int
    pitch: int
    data_path: Path | None = None  # espeak-ng's --path, for a synthetic variant (train/voices.py's VoiceBank)
    engine: str = "espeak-ng"  # or "flite"/"festival" (train/flite.py, festival.py): variant is its voice, no pitch

    @property
    def name(self) -> str:
        if self.engine != "espeak-ng":
            return f"{self.engine}-{self.variant}"
        return self.accent + (f"+{self.variant}" if self.variant else "")

    def row(self) -> dict:
        """The voice's part of a manifest row (flite has no pitch setting: null)."""
        return {"voice": self.name, "rate": self.rate, "pitch": self.pitch if self.engine == "espeak-ng" else None}

    def command(self, text: str, out: Path) -> list[str]:
        """The command that speaks ``text`` in this voice into the WAV ``out``."""
        if self.engine == "flite":
            from falcon_audio_edge.train.flite import flite_command

            return flite_command(text, self.variant, self.rate, out)
        if self.engine == "festival":
            from falcon_audio_edge.train.festival import festival_command

            return festival_command(text, self.variant, self.rate, out)
        where = [f"--path={self.data_path}"] if self.data_path is not None else []
        return ["espeak-ng", *where, "-v", self.name, "-s", str(self.rate), "-p", str(self.pitch), "-w", str(out),
                "--", text]  # fmt: skip


def random_voice(rng: random.Random, split: str) -> Voice:
    """A voice of the split ("train", "heldout", "dev" or "dev2")."""
    accents, variants = SPLITS[split].accents, SPLITS[split].variants
    return Voice(rng.choice(accents), rng.choice(variants), rng.randint(*RATES), rng.randint(30, 70))


def engine_voice(engine: str, rng: random.Random, voices: tuple[str, ...]) -> Voice:
    """One of another engine's ``voices`` (flite, festival) at a random rate of the espeak-ng clips' range; the
    voice's own pitch."""
    return Voice(engine, rng.choice(voices), rng.randint(*RATES), 0, engine=engine)


def speak(text: str, voice: Voice, path: Path, rng: random.Random, augment: bool) -> float:
    """Write ``text`` spoken by ``voice`` as a 16 kHz mono WAV; returns its length in seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        done = subprocess.run(voice.command(text, raw), capture_output=True, text=True, errors="replace")
        # festival reports some errors with exit status 0 and no file
        if done.returncode or not raw.is_file() or raw.stat().st_size == 0:
            raise FaEdgeError(f"{voice.engine} wrote no audio for {text!r} ({voice.name}, exit status "
                              f"{done.returncode}): {done.stderr.strip()[-300:]}")  # fmt: skip
        samples = load_audio(raw).samples
    if augment:
        samples = samples * rng.uniform(0.3, 1.0)  # gain
        if rng.random() < 0.5:  # white noise at 15-35 dB SNR
            snr_db = rng.uniform(15, 35)
            power = float(np.mean(samples**2))
            noise = np.random.default_rng(rng.randrange(2**32)).standard_normal(len(samples))
            samples = samples + noise.astype(np.float32) * np.sqrt(power / 10 ** (snr_db / 10))
    samples = np.clip(samples, -1.0, 1.0)
    sf.write(str(path), samples, SAMPLE_RATE, subtype="PCM_16")
    return len(samples) / SAMPLE_RATE


def user_text(sentence: str, instruction: str | None) -> str:
    """What the text LLM sees: the sentence where the audio goes, then the instruction (as in around_audio)."""
    return sentence + (f"\n{instruction}" if instruction else "")


def plan(split: str, rng: random.Random, voices_per_question: int, extra: Extra | None = None):
    """(task, sentence, instruction) for every clip of a split."""
    questions, statements = read_lines(SPLITS[split].questions), read_lines(SPLITS[split].statements)
    training = SPLITS[split].training

    def transcribe(sentence: str) -> tuple[str, str, str]:
        return "transcribe", sentence, rng.choice(TRANSCRIBE_PROMPTS) if training else "Transcribe the audio."

    for q in questions:
        for _ in range(voices_per_question):
            yield "qa", q, None
        yield transcribe(q)
    for s in statements:
        yield transcribe(s)
        yield transcribe(s)
        if training:
            yield "instruct", s, rng.choice(INSTRUCTIONS)
    if extra is not None:
        for q in extra.questions:
            yield "qa", q, None
            yield transcribe(q)
        for s in extra.sentences + extra.random_words:
            yield transcribe(s)


@dataclass(frozen=True)
class Extra:
    """Generated training text (train/textgen.py): LLM sentences and questions, random word sequences."""

    sentences: list[str]
    questions: list[str]
    random_words: list[str]


COMMON_WORDS = 5000  # the tokenizer's commonest dictionary words, added to the random sequences' vocabulary


def make_extra(answers: TextAnswers, seed: int, n_random: int, vocab: dict[str, int]) -> Extra:
    common = common_words(vocab, COMMON_WORDS)  # first: a missing word list fails before minutes of generation
    heldout = heldout_sentences()
    topics = read_lines("topics.txt")
    sentences = generated_sentences(answers.answer, topics, heldout)
    questions = generated_questions(answers.answer, topics, heldout | {s.lower() for s in sentences})
    words = vocabulary(sentences + questions + split_sentences("train"))
    words = sorted(set(words) | set(common))
    return Extra(sentences, questions, random_word_sentences(random.Random(seed), words, n_random))


def build_split(
    out: Path,
    split: str,
    answers: TextAnswers,
    seed: int,
    voices_per_question: int = 3,
    extra: Extra | None = None,
    progress: Callable[[str], None] = lambda message: None,
) -> Path:
    """Write out/clips/*.wav and out/manifest.jsonl for one split; returns the manifest path."""
    rng = random.Random(seed)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    rows, cache = [], {}
    total = sum(1 for _ in plan(split, random.Random(seed), voices_per_question, extra))  # the count takes no draws
    for i, (task, sentence, instruction) in enumerate(plan(split, rng, voices_per_question, extra)):
        if i % 500 == 0:
            progress(f"{out.name}: {i}/{total} clips spoken")
        voice = random_voice(rng, split)
        clip = out / "clips" / f"{i:05d}.wav"
        seconds = speak(sentence, voice, clip, rng, augment=SPLITS[split].training)
        if task == "transcribe":
            target = sentence
        else:
            key = user_text(sentence, instruction)
            target = cache[key] if key in cache else cache.setdefault(key, answers.answer(key))
        rows.append({
            "audio": f"clips/{clip.name}", "instruction": instruction or "", "target": target, "task": task,
            "text": sentence, **voice.row(),
            "seconds": round(seconds, 3),
        })  # fmt: skip
    return atomic_text(out / "manifest.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


def build_dataset(
    out: str | Path,
    llm: str | Path,
    seed: int = 0,
    voices_per_question: int = 3,
    random_clips: int = 3000,
    progress: Callable[[str], None] = lambda message: None,
    splits: tuple[str, ...] = tuple(SPLITS),
) -> dict[str, Path]:
    """The splits asked for: out/train (training voices, augmented), out/heldout (unseen sentences and voices,
    the test), out/dev (for tuning; its own sentences and variants) and out/dev2 (more dev statements, new ones).
    Each split has its own seed.

    Training also gets the generated text of ``make_extra`` (``random_clips`` random word sequences). A split
    made on its own next to an existing out/train is first checked against that training text.
    """
    from falcon_audio_edge.tokenizer import tokenizer_from_gguf

    out = Path(out)
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        raise ConfigError(f"unknown split {unknown or list(splits)}; choose from {list(SPLITS)}")
    if "train" not in splits:
        check_unseen(out / "train" / "manifest.jsonl", splits)
    check_llm(llm)
    check_voices()
    tokenizer, _ = tokenizer_from_gguf(llm)
    answers = TextAnswers.for_tokenizer(Path(llm), tokenizer)
    try:
        built = {}
        for split in splits:
            extra = None
            if split == "train":
                progress(f"writing training text with {Path(llm).name} (sentences and a question per topic; minutes)")
                extra = make_extra(answers, seed, random_clips, tokenizer.get_vocab())
                progress(f"{len(extra.sentences)} sentences, {len(extra.questions)} questions generated")
            per_question = voices_per_question if split == "train" else 2
            built[split] = build_split(out / split, split, answers, seed + SPLITS[split].seed_offset, per_question,
                                       extra, progress)  # fmt: skip
        return built
    finally:
        answers.decoder.close()


def check_llm(llm: str | Path) -> None:
    """A missing ``--llm`` file is an error naming the option (before minutes of other work)."""
    if not Path(llm).is_file():
        raise ConfigError(f"--llm {llm}: no such GGUF file")


def check_unseen(train_manifest: Path, splits: tuple[str, ...]) -> None:
    """The splits' sentences must not be in an existing training set's spoken text (it may predate them)."""
    if not train_manifest.is_file():
        return
    skipped: Counter = Counter()
    spoken = {text.lower() for _, row in manifest_rows(train_manifest, skipped) if (text := spoken_text(row))}
    warn_skipped(train_manifest, skipped)
    for split in splits:
        leaked = [t for t in split_sentences(split) if t.lower() in spoken]
        if leaked:
            raise ConfigError(f"{len(leaked)} {split} sentences are spoken in {train_manifest}: {leaked[:3]}")

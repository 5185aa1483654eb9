"""The data and training commands of ``fa-edge``: ``synth``, ``respeak``, ``synth-words``,
``synth-sentences``, ``train`` (registered on the app by ``register``; each imports its stage only when run)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def synth(
    out: Annotated[Path, typer.Option("-o", "--out", help="dataset folder (train/, heldout/, dev/ and dev2/ inside)")],
    llm: Annotated[Path, typer.Option(help="the LLM (GGUF) whose answers become the targets")],
    seed: int = 0,
    voices_per_question: Annotated[int, typer.Option(help="spoken-QA clips per training question")] = 3,
    random_clips: Annotated[int, typer.Option(help="training clips of random word sequences")] = 3000,
    split: Annotated[
        list[str] | None, typer.Option(help="make only this split (train, heldout, dev or dev2); repeat for more")
    ] = None,
) -> None:
    """Make the synthetic speech instruction set with espeak-ng (manifests: audio, instruction, target)."""
    from falcon_audio_edge.train.synth import SPLITS, build_dataset

    say = lambda message: typer.echo(message, err=True)  # noqa: E731
    splits = tuple(split) if split else tuple(SPLITS)
    for name, path in build_dataset(out, llm, seed, voices_per_question, random_clips, say, splits).items():
        typer.echo(f"{name}: {path}")


ACCENTS_HELP = "share of clips (0-1) spoken with a synthetic accent: a few vowels moved (train/accent.py)"
CONSONANTS_HELP = "each consonant feature's chance (0-1) in an accented clip: h- and g-dropping, th-fronting, glottal t"
FLITE_HELP = "share of clips (0-1) spoken by flite's training voices instead: another engine (train/flite.py)"
VOICES_HELP = "share of clips (0-1) spoken by a synthetic voice variant made from the training ones (train/voices.py)"
RARE_HELP = "more words drawn at random from the whole dictionary (wamerican), rare and many-token ones too"


def respeak(
    manifest: Annotated[
        list[Path], typer.Argument(help="training manifests (rows with text or transcription targets), read in order")
    ],
    out: Annotated[Path, typer.Option("-o", "--out", help="new folder: clips/ and manifest.jsonl")],
    copies: Annotated[int, typer.Option(help="new clips per row")] = 1,
    seed: int = 0,
    accents: Annotated[float, typer.Option(help=ACCENTS_HELP)] = 0.0,
    voices: Annotated[float, typer.Option(help=VOICES_HELP)] = 0.0,
    consonants: Annotated[float, typer.Option(help=CONSONANTS_HELP)] = 0.0,
    flite: Annotated[float, typer.Option(help=FLITE_HELP)] = 0.0,
    questions: Annotated[
        bool, typer.Option(help="only the transcription rows that speak a question (text ending in '?')")
    ] = False,
) -> None:
    """Speak every row of training manifests again with other training voices (targets kept; no LLM needed)."""
    from falcon_audio_edge.train.grow import respeak as respeak_rows

    made = respeak_rows(manifest, out, copies, seed, accents, voices, consonants, flite, questions)
    typer.echo(f"train: {made}")


def synth_words(
    out: Annotated[Path, typer.Option("-o", "--out", help="new folder: clips/ and manifest.jsonl")],
    llm: Annotated[Path, typer.Option(help="the LLM (GGUF) whose tokenizer picks the common words")],
    clips: Annotated[int, typer.Option(help="random word sequences to speak")] = 10000,
    common_words: Annotated[int, typer.Option(help="how many of the commonest words to draw from")] = 10000,
    seed: int = 0,
    accents: Annotated[float, typer.Option(help=ACCENTS_HELP)] = 0.0,
    voices: Annotated[float, typer.Option(help=VOICES_HELP)] = 0.0,
    consonants: Annotated[float, typer.Option(help=CONSONANTS_HELP)] = 0.0,
    flite: Annotated[float, typer.Option(help=FLITE_HELP)] = 0.0,
    rare_words: Annotated[int, typer.Option(help=RARE_HELP)] = 0,
) -> None:
    """Transcription clips of random word sequences in training voices: more words heard, none learnt by heart."""
    from falcon_audio_edge.train.grow import random_word_set

    made = random_word_set(out, llm, clips, common_words, seed, accents, voices, consonants, flite, rare_words)
    typer.echo(f"train: {made}")


def synth_sentences(
    out: Annotated[Path, typer.Option("-o", "--out", help="new folder: clips/ and manifest.jsonl")],
    llm: Annotated[Path, typer.Option(help="the LLM (GGUF) that writes the sentences; its tokenizer picks the words")],
    prompts: Annotated[int, typer.Option(help="answers to sample, each asked for sentences around one word")] = 2000,
    common_words: Annotated[int, typer.Option(help="how many of the commonest words to draw from")] = 5000,
    seed: int = 0,
    temperature: Annotated[float, typer.Option(help="sampling temperature (above 0, at most 2)")] = 0.8,
    accents: Annotated[float, typer.Option(help=ACCENTS_HELP)] = 0.0,
    voices: Annotated[float, typer.Option(help=VOICES_HELP)] = 0.0,
    consonants: Annotated[float, typer.Option(help=CONSONANTS_HELP)] = 0.0,
    flite: Annotated[float, typer.Option(help=FLITE_HELP)] = 0.0,
    questions: Annotated[
        bool, typer.Option(help="ask the LLM for questions; keep only sentences ending in '?'")
    ] = False,
    first_word: Annotated[
        list[str] | None,
        typer.Option(
            help="begin each answer with one of these words (drawn per prompt; repeat for more, a word given twice is"
            " drawn twice as often); keep only sentences that begin with it"
        ),
    ] = None,
) -> None:
    """Transcription clips of sentences the LLM writes (sampled) around words drawn from its commonest ones."""
    from falcon_audio_edge.train.grow import Shares, sentence_set

    say = lambda message: typer.echo(message, err=True)  # noqa: E731
    shares = Shares(accents, voices, consonants, flite)
    first = tuple(first_word or ())
    manifest = sentence_set(out, llm, prompts, common_words, seed, temperature, shares, say, questions, first)
    typer.echo(f"train: {manifest}")


def train_cmd(config: Annotated[Path, typer.Argument(help="training config (YAML)")]) -> None:
    """Train with the one-stage recipe (runs unchanged under `accelerate launch`)."""
    from falcon_audio_edge.train.config import TrainConfig
    from falcon_audio_edge.train.trainer import train

    result = train(TrainConfig.load(config))
    typer.echo(result.summary())


def register(app: typer.Typer) -> None:
    app.command()(synth)
    app.command()(respeak)
    app.command(name="synth-words")(synth_words)
    app.command(name="synth-sentences")(synth_sentences)
    app.command(name="train")(train_cmd)

"""The turn options shared by ``fa-edge ask`` and ``fa-edge demo``: their help, and the settings of a turn once
the model is open (which heads it has decides the defaults)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from falcon_audio_edge.errors import ConfigError, FaEdgeError
from falcon_audio_edge.settings import (
    DEFAULT_CHAR_WEIGHT,
    DEFAULT_CTC_WEIGHT,
    DEFAULT_CTC_WEIGHT_WITH_CHARS,
    MAX_BEAM_SIZE,
    TRANSCRIBE_PROMPT,
    GenerationSettings,
    RuntimeSettings,
)

LISTEN_HELP = (
    "transcribe first (CTC-guided where the model has CTC heads; --ctc-weight and --char-weight set their weights, "
    "0 turns one off), then the bundle's answer model (answer.gguf) answers the transcript (default: on where the "
    "bundle has an answer model and no --prompt or --transcribe is given)"
)
CTC_HELP = (f"weight of the model's CTC head in greedy decoding, 0 to <1 (default: {DEFAULT_CTC_WEIGHT} for "
            f"transcription by a model with a CTC head, {DEFAULT_CTC_WEIGHT_WITH_CHARS} beside a character head, "
            "else 0; 0 when only --char-weight is given)")  # fmt: skip
CHAR_HELP = (f"weight of the model's character CTC head in greedy decoding; with --ctc-weight below 1 (default: "
             f"{DEFAULT_CHAR_WEIGHT} for transcription by a model with one, else 0; 0 when only --ctc-weight is "
             "given)")  # fmt: skip
BEAM_HELP = f"hypotheses CTC-guided decoding keeps, 1 to {MAX_BEAM_SIZE} (1: greedy)"
CANDIDATES_HELP = "how many of the LLM's likeliest tokens each CTC-guided step rescores (1 to 256)"
PROPOSALS_HELP = ("CTC-guided decoding also scores the tokens the CTC head gives at least this probability at some "
                  "frame, besides the LLM's likeliest (0: off)")  # fmt: skip


def turn_settings(
    generation: GenerationSettings, prompt: str | None, chat: Any, ctc: float | None, chars: float | None,
    listen_first: bool,
) -> tuple[GenerationSettings, GenerationSettings | None]:  # fmt: skip
    """The turn's settings with its CTC heads' weights (None: not asked), and a listen-first turn's
    transcription settings (else None). The weights rescore greedy decoding only (explicit ones were checked
    when ``generation`` was built)."""
    listening = chat.listening_for(generation, ctc, chars) if listen_first else None
    if not generation.greedy:
        return generation, listening
    return chat.with_weights(generation, prompt, ctc, chars), listening


def listens_first(requested: bool | None, prompt: str | None, chat: Any) -> bool:
    """Whether a turn listens first: as asked (``--listen-first`` / ``--no-listen-first``), else where it answers
    the speech (no prompt) and the bundle has an answer model: the original LLM's answers, which the listening
    model's own drifted from in training (docs/quality.md)."""
    if requested is not None:
        return requested
    return prompt is None and chat.open_answerer is not None


def say_heard(result: Any) -> None:
    """A listen-first answer: what was heard goes to stderr after it (stdout keeps the answer alone)."""
    if result.transcript is not None:
        typer.echo(f"(heard: {result.transcript!r})", err=True)


def checked_prompt(prompt: str | None, transcribe: bool, listen_first: bool) -> str | None:
    if transcribe and prompt is not None and prompt != TRANSCRIBE_PROMPT:
        raise ConfigError(f"--transcribe and --prompt {prompt!r} ask for two different things; give one")
    prompt = TRANSCRIBE_PROMPT if transcribe else prompt
    if listen_first and prompt == TRANSCRIBE_PROMPT:
        raise ConfigError("--listen-first answers what it transcribed; for the transcript alone use --transcribe only")
    return prompt


def open_chat(model: Path, runtime: RuntimeSettings) -> tuple[Any, str]:
    from falcon_audio_edge.runtime.bundle import MANIFEST_FILE

    if (model / MANIFEST_FILE).is_file():
        from falcon_audio_edge.runtime.backend import open_bundle

        return open_bundle(model, runtime), "bundle"
    from falcon_audio_edge.checkpoint import is_checkpoint

    if is_checkpoint(model):
        from falcon_audio_edge.reference import open_checkpoint

        return open_checkpoint(model, runtime.threads), "pytorch"
    raise FaEdgeError(f"{model} is neither a bundle (no manifest.json) nor a checkpoint (no fa_edge_config.json)")

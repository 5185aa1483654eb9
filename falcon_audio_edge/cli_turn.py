"""The turn options shared by ``fa-edge ask`` and ``fa-edge demo``: their help, and the settings of a turn once
the model is open (which heads it has decides the defaults)."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import typer

from falcon_audio_edge.errors import ConfigError, FaEdgeError
from falcon_audio_edge.settings import TRANSCRIBE_PROMPT, DecodingSettings, GenerationSettings, RuntimeSettings

LISTEN_HELP = (
    "transcribe first (CTC-guided where the model has CTC heads), then the bundle's answer model answers the "
    "transcript (default: on where the bundle has an answer model and no --prompt or --transcribe is given)"
)
DECODING_HELP = ("a JSON object of expert settings for the transcription's search, over the bundle's own: "
                 f"{', '.join(f.name for f in fields(DecodingSettings))} (docs/architecture.md#decoding)")  # fmt: skip
WEIGHTS = ("ctc_weight", "char_weight")


def read_decoding(path: Path | None) -> dict[str, Any]:
    """``--decoding FILE.json``: its settings, checked on their own before any model is loaded."""
    if path is None:
        return {}
    where = f"--decoding {path}"
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{where}: not a JSON file ({exc})") from exc
    DecodingSettings().updated(data, where)
    return data


def turn_settings(
    generation: GenerationSettings, prompt: str | None, chat: Any, decoding: dict[str, Any], listen_first: bool,
) -> tuple[GenerationSettings, GenerationSettings | None]:  # fmt: skip
    """The turn's settings with the search of ``decoding`` (``--decoding``) over the bundle's own
    (``chat.decoding``), and a listen-first turn's transcription settings (else None). The CTC heads' weights
    guide a transcription (the bundle's, else the model's defaults); another greedy turn only where
    ``decoding`` names them."""
    merged = chat.decoding.updated(decoding, "--decoding")
    generation = replace(generation, **merged.search())
    listening = chat.listening_for(generation, merged.ctc_weight, merged.char_weight) if listen_first else None
    if not generation.greedy:
        return generation, listening
    named = prompt == TRANSCRIBE_PROMPT or any(k in decoding for k in WEIGHTS)
    ctc, chars = (merged.ctc_weight, merged.char_weight) if named else (None, None)
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

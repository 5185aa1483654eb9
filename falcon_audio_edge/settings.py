"""Run-time settings: dataclasses validated in one place. The CLI only builds them."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import Any

from falcon_audio_edge.errors import ConfigError

TRANSCRIBE_PROMPT = "Transcribe the audio."  # the instruction the models are trained to transcribe with
DEFAULT_CTC_WEIGHT = 0.5  # CTC guidance of a transcription when the model has a CTC head (runtime/ctc.py)
# hypotheses CTC-guided decoding keeps: 4, with 16 candidates and no text prior, chosen on the natural-voice dev
# split (2026-12-07) by a rule set before the runs: each 100 ms a clip must buy half a point of WER (training.md)
DEFAULT_BEAM_SIZE = 4
DEFAULT_PROPOSAL_PROB = 0.2  # see GenerationSettings.ctc_proposal_prob; chosen on the dev split
MAX_BEAM_SIZE = 16  # hypotheses a beam search may keep (each one a sequence of the decoder's KV cache)
# the decoder's KV sequences: the conversation + two sets of hypotheses (a step copies the parents into fresh ones);
# llama.cpp reserves one output per sequence and aborts the process if n_batch cannot hold them
BEAM_SEQUENCES = 1 + 2 * MAX_BEAM_SIZE
DEFAULT_CHAR_WEIGHT = 0.3  # the character head's share of a transcription's guidance, where the model has one
DEFAULT_CTC_WEIGHT_WITH_CHARS = 0.3  # ... and the token head's then (the LLM keeps 0.4;
# best over dev and dev2 together)
DEFAULT_CTC_CANDIDATES = 16  # the LLM's likeliest tokens a CTC-guided step rescores, besides the CTC proposals
# (chosen with the beam of 4)


def ctc_weight_for(prompt: str | None, has_ctc_head: bool, requested: float | None = None, chars: float = 0.0) -> float:
    """The token CTC head's weight in a turn: as requested, else for a transcription (the TRANSCRIBE_PROMPT) by
    a model with a CTC head DEFAULT_CTC_WEIGHT, or DEFAULT_CTC_WEIGHT_WITH_CHARS next to a character head's
    weight ``chars``; else 0 (plain decoding)."""
    if requested is not None:
        return requested
    if not has_ctc_head or prompt != TRANSCRIBE_PROMPT:
        return 0.0
    return DEFAULT_CTC_WEIGHT_WITH_CHARS if chars else DEFAULT_CTC_WEIGHT


def char_weight_for(prompt: str | None, has_char_head: bool, requested: float | None = None) -> float:
    """The character head's weight in a turn: as requested, else DEFAULT_CHAR_WEIGHT for a transcription by a
    model with a character head (runtime/chars.py), else 0."""
    if requested is not None:
        return requested
    return DEFAULT_CHAR_WEIGHT if has_char_head and prompt == TRANSCRIBE_PROMPT else 0.0


def guidance_for(
    prompt: str | None, has_ctc_head: bool, has_char_head: bool, ctc: float | None = None, chars: float | None = None
) -> tuple[float, float]:
    """(token CTC weight, character head weight) of a turn: the defaults for the model's heads when neither is
    requested; else as requested, the one not named 0 (``--ctc-weight 0`` alone turns guidance off)."""
    if ctc is not None or chars is not None:
        return ctc or 0.0, chars or 0.0
    char_weight = char_weight_for(prompt, has_char_head)
    return ctc_weight_for(prompt, has_ctc_head, chars=char_weight), char_weight


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


@dataclass(frozen=True)
class GenerationSettings:
    """How the answer is decoded: greedy when temperature is 0, sampled otherwise."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 40
    top_p: float = 0.95
    seed: int | None = None
    ignore_end_of_turn: bool = False  # generate exactly max_tokens (benchmarks)
    ctc_weight: float = 0.0  # > 0: greedy choices rescored by the bundle's CTC head (transcription; runtime/ctc.py)
    char_weight: float = 0.0  # > 0: the character CTC head rescores them too (runtime/chars.py); the LLM keeps
    # 1 - ctc_weight - char_weight
    ctc_candidates: int = DEFAULT_CTC_CANDIDATES  # how many of the LLM's top tokens the CTC heads rescore each step
    ctc_proposal_prob: float = DEFAULT_PROPOSAL_PROB  # > 0: tokens the CTC head gives this at some frame are
    # rescored too (words the LLM does not expect can still be heard); 0: the LLM's top tokens alone
    beam_size: int = DEFAULT_BEAM_SIZE  # hypotheses CTC-guided decoding keeps (1: greedy; runtime/beam.py)

    def __post_init__(self) -> None:
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if not 0.0 <= self.temperature <= 5.0:
            raise ConfigError(f"temperature must be between 0 and 5, got {self.temperature!r}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0 (0 = off), got {self.top_k!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p!r}")
        for name in ("ctc_weight", "char_weight", "ctc_proposal_prob"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ConfigError(f"{name} must be a number from 0 up to (not including) 1, got {value!r}")
        for name in ("ctc_weight", "char_weight"):
            if getattr(self, name) and not self.greedy:
                raise ConfigError(f"{name}={getattr(self, name)} rescores greedy decoding: it needs temperature 0, "
                                  f"got {self.temperature}")  # fmt: skip
        if self.ctc_weight + self.char_weight >= 1.0:
            raise ConfigError(f"ctc_weight={self.ctc_weight} + char_weight={self.char_weight} must stay below 1 "
                              "(the LLM's own weight is what is left)")  # fmt: skip
        if not isinstance(self.beam_size, int) or not 1 <= self.beam_size <= MAX_BEAM_SIZE:
            raise ConfigError(f"beam_size must be an integer from 1 to {MAX_BEAM_SIZE}, got {self.beam_size!r}")
        if not isinstance(self.ctc_candidates, int) or not 1 <= self.ctc_candidates <= 256:
            raise ConfigError(f"ctc_candidates must be an integer from 1 to 256, got {self.ctc_candidates!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def guide_weight(self) -> float:
        """The CTC heads' weight together (token + character; 0: no guidance), against the LLM's 1 - it."""
        return self.ctc_weight + self.char_weight


@dataclass(frozen=True)
class DecodingSettings:
    """How a transcription is searched, for experts: a bundle's own (its manifest's ``decoding`` object) under
    the ones a user gives (``--decoding FILE.json``), each a JSON object of some of these keys. The weights
    rescore greedy decoding with the model's CTC heads (None: the model's defaults, ``guidance_for``); the rest
    shape the beam search (``GenerationSettings``)."""

    ctc_weight: float | None = None
    char_weight: float | None = None
    beam_size: int = DEFAULT_BEAM_SIZE
    ctc_proposal_prob: float = DEFAULT_PROPOSAL_PROB
    ctc_candidates: int = DEFAULT_CTC_CANDIDATES

    def __post_init__(self) -> None:
        GenerationSettings(ctc_weight=self.ctc_weight or 0.0, char_weight=self.char_weight or 0.0, **self.search())

    def search(self) -> dict[str, Any]:
        """The beam search's settings, as ``GenerationSettings`` keywords."""
        return {"beam_size": self.beam_size, "ctc_proposal_prob": self.ctc_proposal_prob,
                "ctc_candidates": self.ctc_candidates}  # fmt: skip

    def updated(self, data: Any, where: str) -> DecodingSettings:
        """These settings with those of ``data`` (a JSON object read from ``where``) over them."""
        keys = [f.name for f in fields(self)]
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: decoding settings must be a JSON object of {keys}, got {type(data).__name__}")
        unknown = sorted(set(data) - set(keys))
        if unknown:
            raise ConfigError(f"{where}: unknown decoding settings {unknown}; known: {keys}")
        try:
            return replace(self, **data)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from exc


DEFAULT_N_CTX = 4096  # the context when none is asked for (or the model's trained context, if smaller)
MAX_N_CTX = 131072
MAX_THREADS = 1024  # even forced


@dataclass(frozen=True)
class RuntimeSettings:
    """How the bundle runs: threads for the encoder and the decoder, context size (None: DEFAULT_N_CTX, or the
    model's trained context if smaller; a larger one than the model's or the memory's is refused on load)."""

    threads: int = 0  # 0: all cores this process may use
    n_ctx: int | None = None
    n_batch: int = 512
    verify_checksums: bool = True
    force_threads: bool = False  # allow more threads than this machine's usable cores

    def __post_init__(self) -> None:
        if not isinstance(self.threads, int) or self.threads < 0:
            raise ConfigError(f"threads must be >= 0 (0 = all cores), got {self.threads!r}")
        cores = default_threads()
        if self.threads > cores and not self.force_threads:
            raise ConfigError(f"threads={self.threads} is more than the {cores} cores this process may use; "
                              "pass --force-threads to use them anyway")  # fmt: skip
        if self.threads > MAX_THREADS:
            raise ConfigError(f"threads={self.threads} is over the limit of {MAX_THREADS}")
        if self.n_ctx is not None and not 64 <= self.n_ctx <= MAX_N_CTX:
            raise ConfigError(f"n_ctx must be from 64 to {MAX_N_CTX}, got {self.n_ctx!r}")
        if self.n_batch < BEAM_SEQUENCES:
            raise ConfigError(f"n_batch must be >= {BEAM_SEQUENCES} (beam search's KV sequences), got {self.n_batch!r}")

    @property
    def n_threads(self) -> int:
        return self.threads or default_threads()

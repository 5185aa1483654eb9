"""JSONL manifests (audio, instruction, target) -> validated examples with their log-mel features.

One row per line: {"audio": "clips/0001.wav", "instruction": "Transcribe the audio.", "target": "..."};
``audio`` is relative to the manifest's folder (or absolute); an empty instruction means the model answers
the speech itself. Rows with missing or unreadable audio, empty targets or clips over 30 s are skipped
with a count and a warning; a manifest with nothing usable left is an error.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from falcon_audio_edge.audio import CHUNK_LENGTH, load_audio
from falcon_audio_edge.config import ModelDims
from falcon_audio_edge.errors import ConfigError, FaEdgeError
from falcon_audio_edge.frontend import audio_features


@dataclass(frozen=True)
class Example:
    mels: tuple[np.ndarray, ...]  # one (n_mels, T) float32 per encoder window, padded to 30 s when the dims say so
    window_tokens: tuple[int, ...]  # the audio tokens each window keeps
    instruction: str | None
    target: str
    task: str
    source: str
    transcript: str | None = None  # the spoken words, where known (the row's "text", or a transcription target)

    @property
    def n_audio_tokens(self) -> int:
        return sum(self.window_tokens)


def _row_problem(row: object) -> str | None:
    if not isinstance(row, dict):
        return "not an object"
    if not isinstance(row.get("audio"), str) or not row["audio"]:
        return "no audio path"
    if not isinstance(row.get("target"), str) or not row["target"].strip():
        return "empty target"
    if not isinstance(row.get("instruction", ""), str):
        return "instruction is not text"
    return None


def manifest_rows(path: Path, skipped: Counter) -> Iterator[tuple[int, object]]:
    """(line number, parsed row) of each non-blank line of a JSONL manifest; lines that are not JSON are
    counted in ``skipped``. A missing manifest is an error before the first row."""
    if not path.is_file():
        raise ConfigError(f"manifest not found: {path}")
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            skipped["not valid JSON"] += 1
            continue
        yield line_no, row


def warn_skipped(path: Path, skipped: Counter) -> None:
    """One warning with the count of skipped rows, by reason."""
    if skipped:
        detail = ", ".join(f"{n} {why}" for why, n in skipped.most_common())
        warnings.warn(f"{path}: skipped {sum(skipped.values())} rows ({detail})", stacklevel=3)


def read_manifest(path: str | Path, dims: ModelDims, limit: int | None = None) -> list[Example]:
    path = Path(path)
    examples, skipped = [], Counter()
    for line_no, row in manifest_rows(path, skipped):
        problem = _row_problem(row)
        if problem is None:
            problem = _load(row, path.parent, dims, examples, f"{path.name}:{line_no}")
        if problem:
            skipped[problem] += 1
        if limit and len(examples) >= limit:
            break
    warn_skipped(path, skipped)
    if not examples:
        raise ConfigError(f"{path}: no usable rows left ({dict(skipped) or 'the manifest is empty'})")
    return examples


def _load(row: dict, base: Path, dims: ModelDims, out: list[Example], where: str) -> str | None:
    audio = Path(row["audio"]) if Path(row["audio"]).is_absolute() else base / row["audio"]
    try:
        clip = load_audio(audio)
    except FaEdgeError:
        return "missing or unreadable audio"
    if clip.seconds > CHUNK_LENGTH:
        return f"audio over {CHUNK_LENGTH} s"
    features = audio_features(clip.samples, dims, where)
    out.append(Example(
        mels=tuple(features.mels), window_tokens=tuple(features.tokens), instruction=row.get("instruction") or None,
        target=row["target"].strip(), task=row.get("task", ""), source=where, transcript=transcript(row),
    ))  # fmt: skip
    return None


def spoken_text(row: object) -> str | None:
    """What a row's clip says (see ``transcript``); None for a row that is not an object with a target."""
    if not isinstance(row, dict) or not isinstance(row.get("target"), str) or not row["target"].strip():
        return None
    return transcript(row)


def transcript(row: dict) -> str | None:
    """What a row's clip says: its ``text``, or the target of a transcription row; None when unknown."""
    text = row.get("text")
    if isinstance(text, str) and text.strip():
        return text.strip()
    return row["target"].strip() if row.get("task") == "transcribe" else None

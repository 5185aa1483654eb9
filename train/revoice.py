"""Evaluation manifests spoken again by another engine's held-out voice: a test of hearing, not of espeak-ng.

``python -m falcon_audio_edge.train.flite`` (flite's awb) and ``python -m falcon_audio_edge.train.festival``
(festival's ked_diphone) write the same rows, targets kept, in a voice no training set uses, for
``train.quality --other-engine`` or ``train.tune``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable
from pathlib import Path

from falcon_audio_edge.errors import ConfigError, FaEdgeError
from falcon_audio_edge.files import atomic_text, staged_dir


def revoice_rows(manifest: Path, out: Path, engine: str, voices: tuple[str, ...], seed: int) -> Path:
    """Every row of ``manifest`` spoken again by one of ``engine``'s ``voices`` at a random rate (no augmentation),
    into a new folder that appears whole or not at all; returns its manifest. The caller has checked the engine
    and its voices."""
    from falcon_audio_edge.train.data import spoken_text
    from falcon_audio_edge.train.grow import check_new_folder
    from falcon_audio_edge.train.synth import engine_voice, speak

    check_new_folder(out)
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    if not rows or any(not (spoken_text(r) or "").strip() for r in rows):
        raise ConfigError(f"{manifest}: every row needs its spoken text (text, or a transcription target)")
    rng = random.Random(seed)
    with staged_dir(out, force=False) as tmp:
        (tmp / "clips").mkdir()
        new = []
        for i, row in enumerate(rows):
            voice = engine_voice(engine, rng, voices)
            clip = tmp / "clips" / f"{i:05d}.wav"
            seconds = speak(spoken_text(row), voice, clip, rng, augment=False)
            new.append({**row, "audio": f"clips/{clip.name}", **voice.row(), "seconds": round(seconds, 3)})
        atomic_text(tmp / "manifest.jsonl", "".join(json.dumps(r) + "\n" for r in new))
    return out / "manifest.jsonl"


def main_for(prog: str, engine: str, revoice: Callable[..., Path], argv: list[str] | None) -> None:
    """The command line of an engine's module: MANIFEST -o DIR [--seed N]; errors are one line, exit 2."""
    parser = argparse.ArgumentParser(
        prog=prog, description=f"Speak an evaluation manifest's rows again with {engine}'s held-out voice."
    )
    parser.add_argument("manifest", type=Path, help="a held-out or dev manifest (fa-edge synth)")
    parser.add_argument("-o", "--out", type=Path, required=True, help="new folder: clips/ and manifest.jsonl")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        print(revoice(args.manifest, args.out, seed=args.seed))
    except (FaEdgeError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

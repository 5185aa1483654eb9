"""List the clips of a split that a bundle does not hear word for word, with the default transcription decoding.

    .venv/bin/python scripts/misheard.py BUNDLE MANIFEST [--task qa] [--beam-size N] [--candidates N]

Prints "N of M heard word for word", then each miss as "voice rRATE pPITCH | said -> heard". Words only (as the
quality report's word-for-word rows: case and punctuation aside, so "colour" against "color" is a miss).
--beam-size and --candidates set the search (the rest is the default decoding's).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from falcon_audio_edge.train.quality import TRANSCRIBE, read_rows, transcribe_all

from falcon_audio_edge.errors import FaEdgeError
from falcon_audio_edge.runtime.backend import open_bundle
from falcon_audio_edge.settings import DEFAULT_BEAM_SIZE, DEFAULT_CTC_CANDIDATES, GenerationSettings
from falcon_audio_edge.verify import words


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--task", default="transcribe", help="the rows heard: transcribe (default) or qa")
    parser.add_argument("--beam-size", type=int, default=DEFAULT_BEAM_SIZE, help="hypotheses the search keeps")
    parser.add_argument("--candidates", type=int, default=DEFAULT_CTC_CANDIDATES, help="LLM tokens scored a step")
    args = parser.parse_args()
    if not args.manifest.is_file():
        parser.exit(2, f"error: manifest not found: {args.manifest}\n")
    try:
        rows = [r for r in read_rows(args.manifest) if r.get("task") == args.task and r.get("text")]
        if not rows:
            parser.exit(2, f"error: {args.manifest}: no {args.task} rows with text\n")
        gen = GenerationSettings(max_tokens=64, beam_size=args.beam_size, ctc_candidates=args.candidates)
        with open_bundle(args.bundle) as chat:
            heard, _ = transcribe_all(chat, rows, args.manifest.parent, chat.with_weights(gen, TRANSCRIBE))
    except FaEdgeError as exc:
        parser.exit(2, f"error: {exc}\n")
    except json.JSONDecodeError as exc:
        parser.exit(2, f"error: {exc.manifest} is not a JSONL manifest: {exc}\n")
    misses = [(r, h) for r, h in zip(rows, heard, strict=True) if words(h) != words(r["text"])]
    print(f"{len(rows) - len(misses)} of {len(rows)} heard word for word")
    for r, h in misses:
        print(f"  {r.get('voice')} r{r.get('rate')} p{r.get('pitch')} | {r['text']!r} -> {h!r}")


if __name__ == "__main__":
    main()

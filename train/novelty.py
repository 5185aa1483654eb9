"""How new each evaluation split's sentences are to the training text: the share of their word pairs and word
triples that the training text also has.

    python -m falcon_audio_edge.train.novelty [--train DATA/train/manifest.jsonl ...]

The training text is the hand-written training lists (``questions.txt``, ``statements.txt``) and, with
``--train``, what the clips of those manifests say (the generated sentences and random words too). A model whose
LLM was trained on those sentences predicts a familiar word triple well; a split that shares many of them with
training measures less listening than one that shares none. Questions and statements are counted apart.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from falcon_audio_edge.train.data import manifest_rows, spoken_text, warn_skipped
from falcon_audio_edge.train.synth import SPLITS, read_lines, split_sentences

from falcon_audio_edge.errors import FaEdgeError

WORD = re.compile(r"[a-z0-9']+")


@dataclass(frozen=True)
class Novelty:
    split: str
    kind: str  # "questions" or "statements"
    sentences: int
    pairs_seen: float  # share of the sentences' word pairs (bigrams) found in the training text
    triples_seen: float  # the same for word triples (trigrams)


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """The word n-grams of one sentence, lower-cased, punctuation dropped."""
    w = WORD.findall(text.lower())
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


def seen_share(sentences: list[str], known: set[tuple[str, ...]], n: int) -> float:
    """Share of the sentences' n-grams (each sentence's counted once) that ``known`` holds."""
    total = seen = 0
    for s in sentences:
        grams = ngrams(s, n)
        total, seen = total + len(grams), seen + len(grams & known)
    return seen / total if total else 0.0


def training_text(manifests: list[Path]) -> list[str]:
    """The hand-written training lists, and what every clip of ``manifests`` says."""
    text = split_sentences("train")
    for manifest in manifests:
        skipped: Counter = Counter()
        text += [t for _, row in manifest_rows(manifest, skipped) if (t := spoken_text(row))]
        warn_skipped(manifest, skipped)
    return text


def novelty(manifests: list[Path] = ()) -> list[Novelty]:
    """Each evaluation split's questions and statements against the training text."""
    text = training_text(list(manifests))
    known = {n: set().union(*(ngrams(t, n) for t in text)) for n in (2, 3)}
    out = []
    for name, split in SPLITS.items():
        if split.training:
            continue
        for kind, listed in (("questions", split.questions), ("statements", split.statements)):
            sentences = read_lines(listed)
            if sentences:
                shares = [seen_share(sentences, known[n], n) for n in (2, 3)]
                out.append(Novelty(name, kind, len(sentences), *shares))
    return out


def main() -> None:
    prog = "python -m falcon_audio_edge.train.novelty"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=Path, action="append", default=[],
                        help="a training manifest whose spoken text joins the training lists (repeatable)")  # fmt: skip
    args = parser.parse_args()
    try:
        rows = novelty(args.train)
    except FaEdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print("| split | kind | sentences | word pairs seen in training | word triples seen in training |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r.split} | {r.kind} | {r.sentences} | {r.pairs_seen:.2f} | {r.triples_seen:.2f} |")


if __name__ == "__main__":
    main()

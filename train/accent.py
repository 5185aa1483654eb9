"""Synthetic accents: each clip's vowels moved toward their neighbours, the same way all through the clip.

An accent the model never heard mostly moves vowels (a strut vowel said further back, a diphthong starting
lower, ...): the consonants and the words stay. espeak-ng has eight English accents and the held-out and dev
splits keep two of them away from training, so training can show only six. This makes more: espeak-ng reads
the text into its phoneme mnemonics (``-x --sep=_``), a few of the clip's vowels are each mapped to one of
their nearest vowels on the vowel chart, every occurrence alike (an accent is a system, not noise), and the
clip is spoken from the phonemes (``[[...]]``) by the training voice. The chart is the textbook one (tongue
height and backness at a vowel's start and end), not a model of any espeak-ng accent.
"""

from __future__ import annotations

import math
import random
import subprocess
from pathlib import Path

# Full English vowels as espeak-ng's mnemonics: (height at the start, backness at the start, height at the
# end, backness at the end); height 0 (open) to 3 (close), backness 0 (front) to 2 (back). Weak vowels (@,
# a#, I2, ...) are never moved, nor the centring diphthongs (I@, e@, ...: each accent rewrites them its own
# way, an r after them in the rhotic ones). Every name here is a phoneme in each training accent's table.
VOWEL_CHART: dict[str, tuple[float, float, float, float]] = {
    "i:": (3.0, 0.0, 3.0, 0.0), "I": (2.5, 0.4, 2.5, 0.4), "e": (2.0, 0.0, 2.0, 0.0),
    "E": (1.5, 0.0, 1.5, 0.0), "a": (0.3, 0.2, 0.3, 0.2), "aa": (0.0, 1.0, 0.0, 1.0),
    "A:": (0.0, 2.0, 0.0, 2.0), "0": (0.3, 2.0, 0.3, 2.0), "O:": (1.2, 2.0, 1.2, 2.0),
    "U": (2.5, 1.6, 2.5, 1.6), "u:": (3.0, 2.0, 3.0, 2.0), "V": (1.0, 1.4, 1.0, 1.4),
    "3:": (1.5, 1.0, 1.5, 1.0), "eI": (1.8, 0.0, 2.6, 0.4), "aI": (0.2, 0.6, 2.5, 0.4),
    "OI": (1.2, 2.0, 2.5, 0.4), "aU": (0.2, 0.8, 2.5, 1.6), "oU": (1.7, 1.8, 2.5, 1.6),
    "o:": (2.0, 2.0, 2.0, 2.0),
}  # fmt: skip
STRESS_MARKS = "',%="
# Textbook consonant features of English accents (each a system too: every place it fits in the clip). Two of
# them are features of the held-out and dev accents (espeak-ng's en-gb-x-gbcwmd drops h, en-gb-x-gbclan says
# -in for -ing), seen in the dev split's errors; the list is the usual one, not theirs alone.
CONSONANT_FEATURES = ("h-dropping", "g-dropping", "th-fronting", "t-glottalling")

NEIGHBOURS = 3  # a moved vowel becomes one of its this many nearest
MAX_MOVES = 3  # a clip with an accent moves 1 to this many of its vowel kinds


def nearest(vowel: str, count: int = NEIGHBOURS) -> list[str]:
    """The ``count`` vowels nearest ``vowel`` on the chart (itself excluded), nearest first."""
    here = VOWEL_CHART[vowel]
    others = sorted((math.dist(here, place), name) for name, place in VOWEL_CHART.items() if name != vowel)
    return [name for _, name in others[:count]]


def phonemes(text: str, voice: str, data_path: Path | None = None) -> list[list[str]]:
    """espeak-ng's phoneme mnemonics for ``text`` in ``voice`` (a variant can change them: it is part of the
    voice), from ``data_path`` if given (a synthetic variant's); a list of words, each a list of phonemes."""
    where = [f"--path={data_path}"] if data_path is not None else []
    cmd = ["espeak-ng", "-q", "-x", "--sep=_", *where, "-v", voice, "--", text]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [word.split("_") for word in out.split()]


def split_stress(phoneme: str) -> tuple[str, str]:
    """("'", "aI") from "'aI": the stress marks before a phoneme, and the phoneme."""
    core = phoneme.lstrip(STRESS_MARKS)
    return phoneme[: len(phoneme) - len(core)], core


def consonant_feature(word: list[tuple[str, str]], feature: str) -> list[tuple[str, str]]:
    """One word's (stress, phoneme) pairs with a consonant feature applied wherever it fits."""
    last = len(word) - 1
    if feature == "h-dropping":  # "house" -> "ouse"; a stress mark on the h moves to what follows
        out, carried = [], ""
        for mark, core in word:
            if core == "h":
                carried += mark
            else:
                out.append((carried + mark, core))
                carried = ""
        return out if out else word
    if feature == "g-dropping":  # "going" -> "goin'"
        return [
            (m, "n" if c == "N" and i == last and i > 0 and word[i - 1][1] == "I" else c)
            for i, (m, c) in enumerate(word)
        ]
    if feature == "th-fronting":  # "think" -> "fink", "brother" -> "bruvver"
        return [(m, {"T": "f", "D": "v"}.get(c, c)) for m, c in word]
    if feature == "t-glottalling":  # "what" -> "wha'"
        return [(m, "?" if c == "t" and i == last and i > 0 else c) for i, (m, c) in enumerate(word)]
    raise ValueError(f"unknown consonant feature {feature!r}; known: {CONSONANT_FEATURES}")


def accent_shift(
    words: list[list[str]], rng: random.Random, moves: int, consonants: tuple[str, ...] = ()
) -> tuple[str, dict[str, str]]:
    """The words with up to ``moves`` of their vowel kinds moved (each to a near vowel, every occurrence
    alike) and the ``consonants`` features applied, as espeak-ng phoneme input; and the vowel moves made."""
    present = sorted({split_stress(p)[1] for word in words for p in word} & VOWEL_CHART.keys())
    chosen = rng.sample(present, min(moves, len(present)))
    shift = {vowel: rng.choice(nearest(vowel)) for vowel in chosen}
    spoken = []
    for word in words:
        parts = [(mark, shift.get(core, core)) for mark, core in map(split_stress, word)]
        for feature in consonants:
            parts = consonant_feature(parts, feature)
        spoken.append("".join(mark + core for mark, core in parts))
    return "[[" + " ".join(spoken) + "]]", shift


def draw_consonants(rng: random.Random, share: float) -> tuple[str, ...]:
    """The consonant features of one accented clip: each with chance ``share`` (0: none, and no draws)."""
    return tuple(f for f in CONSONANT_FEATURES if rng.random() < share) if share else ()

"""What the voices say: sentences as varied as people talk.

- Questions and everyday statements: the hand-written lists in ``train/sentences/`` (``*_dev.txt``, ``*_dev2.txt``
  and ``*_heldout.txt`` never reach training).
- Prose with literary vocabulary: sentences cut from Debian's ``fortunes`` (quotations from literature, science,
  people, wisdom and so on; BSD), training only.
- Commands with numbers and names: timers, alarms, calls, sums, dates, drawn from templates (``commands``).

Training sentences that are also a dev or held-out sentence (case and punctuation aside) are dropped.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from falcon_audio_edge.errors import ConfigError

SENTENCES = Path(__file__).parent / "sentences"
FORTUNES = Path("/usr/share/games/fortunes")
LISTS = {
    "train": ("questions.txt", "statements.txt"),
    "dev": ("questions_dev.txt", "statements_dev.txt", "statements_dev2.txt"),
    "heldout": ("questions_heldout.txt", "statements_heldout.txt"),
}
WORDS = (5, 24)  # a spoken sentence's length in words
CLEAN = re.compile(r"[A-Za-z][A-Za-z ,.'?!;-]*[.?!]")
NAMES = ["Maria", "James", "Aisha", "Chen", "Olga", "Pedro", "Fatima", "Liam", "Priya", "Kenji", "Grace", "Tom",
         "Sofia", "Ahmed", "Emma", "Noah", "Zara", "Lucas", "Mei", "Daniel"]  # fmt: skip
PLACES = ["Paris", "Tokyo", "Chicago", "Nairobi", "Berlin", "Lima", "Sydney", "Toronto", "Madrid", "Cairo", "Oslo",
          "Mumbai", "Boston", "Rome", "Seoul", "Dublin"]  # fmt: skip
TEMPLATES = [
    "Set a timer for {n} minutes.", "Wake me up at {h} thirty tomorrow.", "Call {name} at {h} o'clock.",
    "What is {n} times {m}?", "What is {n} plus {m}?", "Remind me to call {name} on {day}.",
    "How far is {place} from {place2}?", "What time is it in {place} right now?",
    "Send a message to {name} saying I will be {n} minutes late.", "Add {n} eggs to the shopping list.",
    "Play some music by {name} and turn the volume up.", "What will the weather be like in {place} on {day}?",
    "Book a table for {m} people at {h} tonight.", "How many days are there until {day}?",
    "Turn the heating up to {n} degrees.", "Is {name} coming to the meeting on {day}?",
    "Convert {n} miles to kilometers.", "My flight to {place} leaves at {h} in the morning.",
]  # fmt: skip
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def key(sentence: str) -> str:
    return re.sub(r"[^a-z0-9 ]", "", sentence.lower()).strip()


def read_list(name: str) -> list[str]:
    return [line.strip() for line in (SENTENCES / name).read_text().splitlines() if line.strip()]


def fortune_sentences(folder: Path = FORTUNES) -> list[str]:
    """Clean, speakable sentences of 5-24 words from the fortune files (none if the package is absent)."""
    if not folder.is_dir():
        return []
    found: dict[str, str] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix or not path.is_file():  # the text files have no extension (.dat, .u8 are indexes)
            continue
        for entry in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            lines = [ln.strip() for ln in entry.splitlines() if ln.strip() and not ln.strip().startswith("--")]
            text = " ".join(lines)
            for sentence in re.split(r"(?<=[.?!])\s+", text.replace(" -- ", ", ")):
                words = sentence.split()
                plain = ".." not in sentence and "--" not in sentence and not sentence.isupper()
                if WORDS[0] <= len(words) <= WORDS[1] and CLEAN.fullmatch(sentence) and plain:
                    found.setdefault(key(sentence), sentence)
    return sorted(found.values())


def commands(n: int, seed: int = 0) -> list[str]:
    """``n`` templated commands with numbers and names (digits, as engines and Whisper write them)."""
    rng = random.Random(seed)
    out = set()
    while len(out) < n:
        place, place2 = rng.sample(PLACES, 2)
        out.add(rng.choice(TEMPLATES).format(
            n=rng.randint(2, 95), m=rng.randint(2, 12), h=rng.randint(1, 12), name=rng.choice(NAMES),
            place=place, place2=place2, day=rng.choice(DAYS),
        ))  # fmt: skip
    return sorted(out)


def split_sentences(split: str, fortunes: Path = FORTUNES, n_commands: int = 600) -> list[str]:
    """A split's sentences; training's without any dev or held-out sentence."""
    if split not in LISTS:
        raise ConfigError(f"unknown split {split!r}; choose from {sorted(LISTS)}")
    sentences = [s for name in LISTS[split] for s in read_list(name)]
    if split != "train":
        return sentences
    kept = {key(s) for other in ("dev", "heldout") for name in LISTS[other] for s in read_list(name)}
    pool = sentences + fortune_sentences(fortunes) + commands(n_commands)
    return [s for s in pool if key(s) not in kept]

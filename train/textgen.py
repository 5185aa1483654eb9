"""More text for the synthetic set: sentences the LLM writes about many topics, its own short questions,
and random word sequences (which no language model can guess, so only listening transcribes them).

Topics are the hand-written list in ``train/sentences/topics.txt``; nothing here touches the held-out lists
except to drop any generated sentence that equals a held-out one.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from falcon_audio_edge.errors import ConfigError, MissingDataError

GENERATE = [
    "Write three short sentences about {}.",
    "Tell me a short story about {}.",
    "Describe {} in simple words.",
    "What might someone say about {}? Write two sentences.",
]
ASK = "Ask one short question about {}."
SENTENCE = re.compile(r"^[A-Z][A-Za-z ,'\-]*[A-Za-z][.!?]$")  # plain words: no digits, lists or markup
MIN_WORDS, MAX_WORDS = 4, 22


def split_sentences(text: str) -> list[str]:
    """The clean sentences of a generated text (speakable, 4-22 words, no digits or markup)."""
    out = []
    for part in re.split(r"(?<=[.!?])\s+|\n+", text):
        part = part.strip()
        if SENTENCE.match(part) and MIN_WORDS <= len(part.split()) <= MAX_WORDS:
            out.append(part)
    return out


def generated_sentences(answer, topics: Iterable[str], exclude: set[str]) -> list[str]:
    """Sentences the LLM writes about each topic (greedy, so the same on every run), de-duplicated."""
    seen, out = set(exclude), []
    for topic in topics:
        for template in GENERATE:
            for s in split_sentences(answer(template.format(topic))):
                if s.lower() not in seen:
                    seen.add(s.lower())
                    out.append(s)
    return out


def generated_questions(answer, topics: Iterable[str], exclude: set[str]) -> list[str]:
    """One short question per topic where the LLM writes one (the first sentence ending in '?')."""
    seen, out = set(exclude), []
    for topic in topics:
        for s in split_sentences(answer(ASK.format(topic))):
            if s.endswith("?") and s.lower() not in seen:
                seen.add(s.lower())
                out.append(s)
                break
    return out


def vocabulary(sentences: Iterable[str]) -> list[str]:
    """The distinct lower-case words of the given sentences, sorted (so a seed gives the same draws)."""
    return sorted({w for s in sentences for w in re.findall(r"[a-z]+(?:'[a-z]+)?", s.lower()) if len(w) > 1})


DICTIONARY = Path("/usr/share/dict/words")  # Debian's wamerican


def dictionary_lines(dictionary: Path = DICTIONARY) -> list[str]:
    """The dictionary's words, one per line, stripped; a missing word list is an error naming its package."""
    if not dictionary.is_file():
        raise MissingDataError(f"{dictionary} not found: install Debian's wamerican (scripts/setup.sh does)")
    return [w.strip() for w in dictionary.read_text(errors="replace").splitlines()]


def common_words(vocab: dict[str, int], n: int, dictionary: Path = DICTIONARY, names: bool = False) -> list[str]:
    """The ``n`` commonest English words by the LLM's own tokenizer: whole-word tokens (a leading space
    marker, 3-12 lower-case letters) that are dictionary words, in token-id order (BPE merges come roughly in
    frequency order). Spoken in random sequences they widen the words training hears far past the generated
    text's, so the model must learn to spell what it hears rather than recall sentences. ``names``: capitalised
    dictionary words too (places, months, days, first names), in the same order and count."""
    lines = dictionary_lines(dictionary)
    lower = {w for w in lines if w.islower()}
    # a name that is also a lower-case word (May, Will, Bill) sounds the same: its case cannot be heard
    names_ok = {w for w in lines if names and w[:1].isupper() and w[1:].islower() and w.lower() not in lower}
    known = lower | names_ok
    shape = re.compile(r"[a-z]{3,12}|[A-Z][a-z]{2,11}" if names else r"[a-z]{3,12}")
    out, seen = [], set()
    for token, _ in sorted(vocab.items(), key=lambda item: item[1]):
        word = token.lstrip("\u0120\u2581")  # the byte-level BPE (Ġ) or SentencePiece (▁) space marker
        if word != token and shape.fullmatch(word) and word in known and word not in seen:
            seen.add(word)
            out.append(word)
            if len(out) == n:
                break
    return out


EXCLUDED = Path(__file__).parent / "sentences" / "excluded_words.txt"


@lru_cache(maxsize=1)
def excluded_words() -> frozenset[str]:
    """The slurs and profanity the dictionary draw leaves out (sentences/excluded_words.txt)."""
    lines = (w.strip() for w in EXCLUDED.read_text().splitlines())
    return frozenset(w for w in lines if w and not w.startswith("#"))


def excluded(word: str) -> bool:
    """One of excluded_words(), or its plural."""
    stems = excluded_words()
    plural_es = word.endswith("es") and word[:-2] in stems and word[:-2].endswith(("s", "x", "z", "ch", "sh"))
    return word in stems or (word.endswith("s") and word[:-1] in stems) or plural_es


def dictionary_words(rng: random.Random, n: int, dictionary: Path = DICTIONARY) -> list[str]:
    """``n`` lower-case dictionary words (3-12 letters, no slur or profanity) drawn at random, however rare and
    however many tokens the LLM spells them with: ``common_words`` has only whole-word tokens, so a word such as
    "walrus" or "lantern" (several tokens) is never in it, and a model trained on it hears such words only in its
    sentences."""
    shape = re.compile(r"[a-z]{3,12}")
    words = sorted({w for w in dictionary_lines(dictionary) if shape.fullmatch(w) and not excluded(w)})
    if n > len(words):
        raise ConfigError(f"--rare-words {n}: {dictionary} has only {len(words)} lower-case words of 3-12 letters")
    return rng.sample(words, n)


def random_word_sentences(rng: random.Random, words: list[str], n: int, lo: int = 3, hi: int = 8) -> list[str]:
    if not words:
        raise ValueError("random_word_sentences needs a non-empty vocabulary")
    return [" ".join(rng.choice(words) for _ in range(rng.randint(lo, hi))) for _ in range(n)]

"""More text for the synthetic set: sentences the LLM writes about many topics, its own short questions,
sentences it samples around words drawn from its tokenizer's commonest ones, and random word sequences (which no
language model can guess, so only listening transcribes them). ``TextAnswers`` runs the LLM on text turns.

Topics are the hand-written list in ``train/sentences/topics.txt``; nothing here touches the held-out lists
except to drop any generated sentence that equals a held-out one.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable
from functools import lru_cache
from pathlib import Path

import numpy as np

from falcon_audio_edge.errors import ConfigError, MissingDataError
from falcon_audio_edge.settings import default_threads

GENERATE = [
    "Write three short sentences about {}.",
    "Tell me a short story about {}.",
    "Describe {} in simple words.",
    "What might someone say about {}? Write two sentences.",
]
ASK = "Ask one short question about {}."
SENTENCE = re.compile(r"^[A-Z][A-Za-z ,'\-]*[A-Za-z][.!?]$")  # plain words: no digits, lists or markup
MIN_WORDS, MAX_WORDS = 4, 22


class TextAnswers:
    """The LLM's greedy answers to text turns, through llama.cpp (the same chat layout as the model)."""

    def __init__(self, gguf: Path, layout, max_tokens: int = 64):
        from falcon_audio_edge.runtime.decoder import LlamaDecoder

        self.decoder = LlamaDecoder(gguf, n_ctx=1024, n_batch=256, n_threads=default_threads())
        self.layout = layout
        self.max_tokens = max_tokens
        self.eot = self.decoder.tokenize(layout.end_of_turn)[0]

    @classmethod
    def for_tokenizer(cls, gguf: Path, tokenizer, max_tokens: int = 64) -> TextAnswers:
        """Answers in the chat layout of the GGUF's own tokenizer (as the model is prompted)."""
        from falcon_audio_edge.config import PromptLayout
        from falcon_audio_edge.importers import chat_format_of

        return cls(gguf, PromptLayout.for_format(chat_format_of(tokenizer)), max_tokens)

    def answer(self, user_text: str) -> str:
        return self.reply(user_text, lambda logits: int(np.argmax(logits)))

    def sample(
        self, user_text: str, rng: np.random.Generator, temperature: float = 0.8, top_k: int = 40, start: str = ""
    ) -> str:
        """An answer drawn token by token from the ``top_k`` likeliest, softened by ``temperature`` (more varied
        text than the greedy answer, the same for the same generator state); ``start``: see ``reply``."""

        def pick(logits: np.ndarray) -> int:
            top = np.argpartition(logits, -top_k)[-top_k:]
            scaled = logits[top].astype(np.float64) / temperature
            p = np.exp(scaled - scaled.max())
            return int(top[rng.choice(top_k, p=p / p.sum())])

        return self.reply(user_text, pick, start)

    def reply(self, user_text: str, pick: Callable[[np.ndarray], int], start: str = "") -> str:
        """The answer to one text turn, each next token chosen by ``pick`` from the logits. ``start``: the answer
        is made to begin with this text (fed as if the LLM had written it; returned as part of the answer)."""
        self.decoder.reset()
        self.decoder.feed_tokens(self.decoder.tokenize(self.layout.text_turn(user_text) + start))
        out = []
        for _ in range(self.max_tokens):
            token = pick(self.decoder.logits())
            if token == self.eot or token == self.decoder.eos_id:
                break
            out.append(token)
            self.decoder.feed_tokens([token])
        text = (start + b"".join(self.decoder.token_bytes(t) for t in out).decode("utf-8", "replace")).strip()
        if len(out) == self.max_tokens and "." in text:  # cut a truncated answer at its last full sentence
            text = text[: text.rfind(".") + 1]
        return text


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


def is_question(text: str) -> bool:
    """A question, as the data sets count one: text that ends in "?" (spaces aside)."""
    return text.strip().endswith("?")


def generated_questions(answer, topics: Iterable[str], exclude: set[str]) -> list[str]:
    """One short question per topic where the LLM writes one (the first sentence ending in '?')."""
    seen, out = set(exclude), []
    for topic in topics:
        for s in split_sentences(answer(ASK.format(topic))):
            if is_question(s) and s.lower() not in seen:
                seen.add(s.lower())
                out.append(s)
                break
    return out


WORD_PROMPTS = [
    'Write two short everyday sentences that use the word "{}".',
    "Write a short sentence about your day that mentions {}.",
]
QUESTION_PROMPTS = [  # spoken questions, as a voice assistant hears them; only sentences ending in "?" are kept
    "Write a short question a curious child might ask about {}.",
    "Ask one short general knowledge question about {}.",
    "Write two short questions someone might ask about {}.",
]


def word_prompt_sentences(
    answer: Callable[..., str],
    words: list[str],
    n_prompts: int,
    rng: random.Random,
    exclude: set[str],
    progress: Callable[[str], None] = lambda message: None,
    questions: bool = False,
    first_words: tuple[str, ...] = (),
) -> list[str]:
    """The clean sentences of ``n_prompts`` answers, each asked for sentences around a word drawn from ``words``
    (with a drawn WORD_PROMPTS template), de-duplicated and none in ``exclude`` (lower-case). ``answer`` samples,
    so the same word gives new text each time; the words spread the text over far more topics than topics.txt.
    ``questions``: asked for questions instead (QUESTION_PROMPTS), and only sentences ending in "?" are kept.
    ``first_words``: each answer is made to begin with one drawn from them (``answer(prompt, start=word)``) and
    only sentences that begin with it are kept: a share of each first word the LLM would rarely choose itself."""
    if not words:
        raise ValueError("word_prompt_sentences needs a non-empty word list")
    templates = QUESTION_PROMPTS if questions else WORD_PROMPTS
    seen, out = set(exclude), []
    for i in range(n_prompts):
        if i % 200 == 0:
            progress(f"{i}/{n_prompts} prompts answered, {len(out)} sentences kept")
        prompt = rng.choice(templates).format(rng.choice(words))
        first = rng.choice(first_words) if first_words else None
        for s in split_sentences(answer(prompt, start=first) if first else answer(prompt)):
            if (questions and not is_question(s)) or (first and s.split()[0] != first):
                continue
            if s.lower() not in seen and not any(excluded(w) for w in re.findall(r"[a-z]+", s.lower())):
                seen.add(s.lower())
                out.append(s)
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

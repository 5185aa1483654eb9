"""Generated training text: sentence filtering, the LLM-driven generators (on a stub answerer), random words."""

from __future__ import annotations

import random

import pytest
from falcon_audio_edge.train.textgen import (
    generated_questions,
    generated_sentences,
    random_word_sentences,
    split_sentences,
    vocabulary,
    word_prompt_sentences,
)


def test_split_sentences_keeps_plain_speakable_sentences():
    text = (
        "The ocean is vast and deep. It has 5 oceans.\n1. Bees make honey.\n**Bold** text here.\n"
        "Short one. Do fish ever sleep at night? Whales sing long songs to each other!"
    )
    assert split_sentences(text) == [
        "The ocean is vast and deep.",
        "Do fish ever sleep at night?",
        "Whales sing long songs to each other!",
    ]


def test_generators_deduplicate_and_respect_the_exclusions():
    replies = {
        "ocean": "The sea is very big today. The sea is very big today. Fish swim in the sea all day.",
        "bees": "Bees make honey in their hives. Why do bees make honey for us? What do bees eat in winter?",
    }

    def answer(prompt: str) -> str:
        return replies["ocean" if "ocean" in prompt else "bees"]

    sentences = generated_sentences(answer, ["the ocean"], exclude={"fish swim in the sea all day."})
    assert sentences == ["The sea is very big today."]
    assert generated_questions(answer, ["honey bees"], exclude=set()) == ["Why do bees make honey for us?"]


def test_random_words_are_reproducible_and_drawn_from_the_vocabulary():
    words = vocabulary(["The cat sat on the mat.", "A dog's bone!"])
    assert words == ["bone", "cat", "dog's", "mat", "on", "sat", "the"]  # "A" is one letter: left out
    a = random_word_sentences(random.Random(1), words, 20)
    assert a == random_word_sentences(random.Random(1), words, 20)
    assert all(3 <= len(s.split()) <= 8 and set(s.split()) <= set(words) for s in a)
    with pytest.raises(ValueError, match="non-empty vocabulary"):
        random_word_sentences(random.Random(1), [], 3)


def test_common_words_are_whole_word_dictionary_tokens_in_id_order(tmp_path):
    from falcon_audio_edge.train.textgen import common_words

    dictionary = tmp_path / "words"
    dictionary.write_text("the\ncat\nhouse\nDog\nzebra\n")
    vocab = {"Ġzebra": 9, "Ġthe": 0, "Ġcon": 1, "cat": 2, "Ġcat": 5, "ĠDog": 3, "▁house": 7, "Ġho": 4}
    assert common_words(vocab, 10, dictionary) == ["the", "cat", "house", "zebra"]
    assert common_words(vocab, 2, dictionary) == ["the", "cat"]
    dictionary.write_text("the\ncat\nhouse\nDog\nzebra\nmay\nMay\nantibacterial\nresponsibles\n")
    vocab |= {"ĠMay": 6, "Ġresponsibles": 8, "Ġantibacterial": 10}  # 12 and 13 letters
    assert common_words(vocab, 20, dictionary) == ["the", "cat", "house", "responsibles", "zebra"]
    # names too, but not one that is also a lower-case word (May / may sound the same)
    assert common_words(vocab, 20, dictionary, names=True) == ["the", "Dog", "cat", "house", "responsibles", "zebra"]
    with pytest.raises(FileNotFoundError, match="wamerican"):
        common_words(vocab, 2, tmp_path / "missing")


def test_dictionary_words_are_drawn_from_the_whole_dictionary_reproducibly(tmp_path):
    from falcon_audio_edge.train.textgen import dictionary_words

    from falcon_audio_edge.errors import ConfigError

    dictionary = tmp_path / "words"
    dictionary.write_text("walrus\nlantern\nDog\nab\nit's\nantibacterials\nzebra\nzebra\n")
    drawn = dictionary_words(random.Random(2), 3, dictionary)
    assert sorted(drawn) == ["lantern", "walrus", "zebra"]  # lower-case, 3-12 letters, each once
    assert dictionary_words(random.Random(2), 3, dictionary) == drawn
    assert len(dictionary_words(random.Random(2), 2, dictionary)) == 2
    with pytest.raises(ConfigError, match="--rare-words 4: .* has only 3 lower-case words"):
        dictionary_words(random.Random(2), 4, dictionary)
    with pytest.raises(FileNotFoundError, match="wamerican"):
        dictionary_words(random.Random(2), 1, tmp_path / "missing")


def test_dictionary_words_leave_out_slurs_and_profanity_and_their_plurals_only(tmp_path):
    from falcon_audio_edge.train.textgen import dictionary_words, excluded, excluded_words

    assert "shit" in excluded_words() and not any(w.startswith("#") for w in excluded_words())
    assert excluded("shit") and excluded("shits") and excluded("bitches") and excluded("shitty")
    assert not excluded("spices") and not excluded("crapes") and not excluded("dickens")  # spic + es, crap + es
    dictionary = tmp_path / "words"
    dictionary.write_text("walrus\nshit\nshits\nspices\nlantern\n")
    assert sorted(dictionary_words(random.Random(0), 3, dictionary)) == ["lantern", "spices", "walrus"]


def test_word_prompted_sentences_draw_their_words_and_drop_repeats_exclusions_and_slurs():
    from falcon_audio_edge.train.textgen import WORD_PROMPTS, excluded_words

    asked: list[str] = []
    slur = sorted(excluded_words())[0]

    def answer(prompt: str) -> str:
        asked.append(prompt)
        return f"The kettle is on the stove. We walked to the {slur} today. It rained on the market all day."

    words = ["kettle", "market", "harbour"]
    out = word_prompt_sentences(answer, words, 5, random.Random(3), exclude={"it rained on the market all day."})
    assert out == ["The kettle is on the stove."]  # once, without the excluded sentence or the slur's
    assert len(asked) == 5
    assert all(any(p == t.format(w) for t in WORD_PROMPTS for w in words) for p in asked)
    again: list[str] = []
    word_prompt_sentences(lambda p: again.append(p) or "", words, 5, random.Random(3), exclude=set())
    assert again == asked  # the seed draws the same prompts
    with pytest.raises(ValueError, match="non-empty word list"):
        word_prompt_sentences(answer, [], 1, random.Random(0), set())


def test_question_prompts_keep_only_the_questions():
    from falcon_audio_edge.train.textgen import QUESTION_PROMPTS

    asked: list[str] = []

    def answer(prompt: str) -> str:
        asked.append(prompt)
        return "Here are two questions. How do kettles boil water? Why is the market shut? How do kettles boil water?"

    out = word_prompt_sentences(answer, ["kettle"], 3, random.Random(1), exclude=set(), questions=True)
    assert out == ["How do kettles boil water?", "Why is the market shut?"]
    assert all(any(p == t.format("kettle") for t in QUESTION_PROMPTS) for p in asked) and len(asked) == 3


def test_first_words_begin_each_answer_and_only_sentences_that_begin_so_are_kept():
    from falcon_audio_edge.train.textgen import QUESTION_PROMPTS, WORD_PROMPTS

    starts: list[str] = []

    def answer(prompt: str, start: str = "") -> str:
        assert any(prompt == t.format("kettle") for t in QUESTION_PROMPTS + WORD_PROMPTS)
        starts.append(start)
        return f"{start} boils the kettle first? What is a kettle? {start} shuts the market at night."

    out = word_prompt_sentences(
        answer, ["kettle"], 8, random.Random(2), exclude=set(), questions=True, first_words=("Who", "Where")
    )
    assert len(starts) == 8 and set(starts) == {"Who", "Where"}  # each prompt draws one; both drawn in 8
    assert sorted(out) == ["Where boils the kettle first?", "Who boils the kettle first?"]  # not What, no statement
    del starts[:]
    kept = word_prompt_sentences(answer, ["kettle"], 4, random.Random(2), exclude=set(), first_words=("Who",))
    assert kept == [
        "Who boils the kettle first?",
        "Who shuts the market at night.",
    ]  # statements too, without --questions

"""GGUF tokenizers tokenize exactly like the HF tokenizers they came from, and load in plain llama.cpp."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from falcon_audio_edge.export.gguf_decoder import write_gguf
from gguf import GGUFReader

from falcon_audio_edge.checkpoint import builtin_corpus
from falcon_audio_edge.config import PromptLayout, preset_dims
from falcon_audio_edge.errors import ConfigError
from falcon_audio_edge.tokenizer import chat_template, detect_pre, tokenizer_from_gguf, tokenizer_json, train_bpe
from tests.conftest import smollm2_gguf

STRINGS = [
    "Hello world",
    "Hello, world! How are you?",
    "  two leading spaces and   runs   of spaces ",
    "tabs\tand\t\ttabs\nnew\n\n\nlines\r\n",
    "numbers 1 12 123 1234 12345 3.14159 -42 1,000,000",
    "Café naïve résumé São Paulo Kraków",
    "日本語のテキスト 中文 한국어",
    "emoji 🙂🚀 and symbols ©®™ ∑∫√",
    "don't won't I'll we're they've she'd IT'S",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<|user|>\nhello<|endoftext|>\n<|assistant|>\n",
    "",
    " ",
    "\n",
]


def gguf_with_tokenizer(tokenizer, pre: str, chat_format: str, path: Path) -> Path:
    """A tiny random Llama decoder carrying ``tokenizer``, written by the exporter."""
    from transformers import LlamaForCausalLM

    from falcon_audio_edge.model import llama_config

    dims = preset_dims("tiny").with_vocab(len(tokenizer))
    dims = replace(dims, tokenizer_pre=pre, prompt=PromptLayout.for_format(chat_format))
    llm = LlamaForCausalLM(llama_config(dims.decoder))
    return write_gguf(llm, tokenizer, dims, path, "f32", "test")


def llama_tokenize(path: Path, texts: list[str]) -> list[list[int]]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        return [llm.tokenize(t.encode("utf-8"), add_bos=False, special=True) for t in texts]
    finally:
        llm.close()


def hf_tokenize(tokenizer, texts: list[str]) -> list[list[int]]:
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def read_key(path: Path, key: str):
    return GGUFReader(str(path)).fields[key].contents()


@pytest.mark.parametrize("chat_format, pre", [("chatml", "gpt-2"), ("falcon3", "falcon3")])
def test_trained_tiny_bpe_tokenizes_like_hf(tmp_path, chat_format, pre):
    tokenizer = train_bpe(builtin_corpus(), 400, chat_format, pre)
    path = gguf_with_tokenizer(tokenizer, pre, chat_format, tmp_path / "tok.gguf")
    assert read_key(path, "tokenizer.ggml.pre") == pre
    assert llama_tokenize(path, STRINGS) == hf_tokenize(tokenizer, STRINGS)
    rendered = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert llama_tokenize(path, [rendered]) == hf_tokenize(tokenizer, [rendered])


def test_falcon3_tokenizer_is_detected_as_llama3_style():
    tokenizer = train_bpe(builtin_corpus(), 300, "falcon3", "falcon3")
    assert set(detect_pre(tokenizer_json(tokenizer))) == {"falcon3", "llama-bpe"}


def test_pre_tokenizer_mismatch_is_refused(tmp_path):
    tokenizer = train_bpe(builtin_corpus(), 300, "chatml", "gpt-2")
    with pytest.raises(ConfigError, match="tokenizer_pre 'falcon3' does not match"):
        gguf_with_tokenizer(tokenizer, "falcon3", "chatml", tmp_path / "bad.gguf")
    assert not (tmp_path / "bad.gguf").exists()


def test_smollm2_tokenizer_round_trips_through_our_gguf(tmp_path):
    tokenizer, pre = tokenizer_from_gguf(smollm2_gguf())
    assert pre == "smollm"
    path = gguf_with_tokenizer(tokenizer, pre, "chatml", tmp_path / "smol.gguf")
    ours = llama_tokenize(path, STRINGS)
    assert ours == hf_tokenize(tokenizer, STRINGS)
    assert ours == llama_tokenize(smollm2_gguf(), STRINGS)  # and like the original GGUF


def test_chat_template_matches_prompt_layout():
    layout = PromptLayout.for_format("falcon3", system_prompt="Be brief.")
    tokenizer = train_bpe(builtin_corpus(), 300, "falcon3", "falcon3")
    assert tokenizer.chat_template == chat_template("falcon3")
    rendered = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert rendered == layout.text_turn("Hi")


def test_decoder_gguf_runs_in_plain_llama_cpp(bundle_f16):
    from llama_cpp import Llama

    path = bundle_f16 / "decoder.gguf"
    assert read_key(path, "general.architecture") == "llama"
    assert "falcon_audio_edge.dims" in GGUFReader(str(path)).fields
    llm = Llama(model_path=str(path), n_ctx=256, verbose=False)
    try:
        out = llm("Hello, how are you", max_tokens=8, temperature=0.0)
        assert out["usage"]["completion_tokens"] >= 1
        chat = llm.create_chat_completion([{"role": "user", "content": "Hi"}], max_tokens=4)
        assert chat["choices"][0]["message"]["role"] == "assistant"
    finally:
        llm.close()

"""Tokenizers: train a small byte-level BPE, map HF pre-tokenizers to llama.cpp names, read GGUF vocabs.

llama.cpp picks its pre-tokenizer regex by the name in ``tokenizer.ggml.pre``;
``PRE_TOKENIZERS`` is the declarative table between those names and the HF
``pre_tokenizer`` JSON that tokenizes the same way. A tokenizer that matches no
row is an error, never guessed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from falcon_audio_edge.config import CHAT_FORMATS
from falcon_audio_edge.errors import ConfigError

# HF's split regex for Llama-3 style tokenizers (Falcon3 uses the same one).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

_BYTELEVEL_REGEX = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
_BYTELEVEL_PLAIN = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
_LLAMA3 = [
    {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": False},
    _BYTELEVEL_PLAIN,
]
# llama.cpp pre-tokenizer name -> the HF pre_tokenizer steps it reproduces
PRE_TOKENIZERS: dict[str, list[dict[str, Any]]] = {
    "gpt-2": [_BYTELEVEL_REGEX],
    "smollm": [{"type": "Digits", "individual_digits": True}, _BYTELEVEL_REGEX],
    "llama-bpe": _LLAMA3,
    "falcon3": _LLAMA3,
}
# names whose llama.cpp pre-tokenizer skips BPE merges for whole-vocab words
IGNORE_MERGES = {"llama-bpe", "falcon3"}

SPECIAL_TOKENS: dict[str, list[str]] = {
    "chatml": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    "falcon3": ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>"],
}


def chat_template(chat_format: str) -> str:
    """A Jinja chat template equal to the prompt layout's text pieces (for llama.cpp and HF)."""
    f = CHAT_FORMATS[chat_format]
    q = json.dumps  # Jinja string literals are JSON-compatible
    return (
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}"
        + "{{ "
        + q(f["system_start"])
        + " + message['content'] + "
        + q(f["turn_end"])
        + " }}"
        "{% elif message['role'] == 'user' %}"
        + "{{ "
        + q(f["user_start"])
        + " + message['content'] + "
        + q(f["turn_end"])
        + " }}"
        "{% else %}" + "{{ " + q(f["assistant_start"]) + " + message['content'] + " + q(f["assistant_end"]) + " }}"
        "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}" + "{{ " + q(f["assistant_start"]) + " }}{% endif %}"
    )


def _steps(pre_tokenizer: dict[str, Any] | None) -> list[dict[str, Any]]:
    """HF pre_tokenizer JSON as a list of steps, keeping only the keys that change tokenization."""
    if pre_tokenizer is None:
        return []
    steps = pre_tokenizer["pretokenizers"] if pre_tokenizer.get("type") == "Sequence" else [pre_tokenizer]
    keep = {"type", "add_prefix_space", "use_regex", "individual_digits", "pattern", "behavior", "invert"}
    return [{k: v for k, v in step.items() if k in keep} for step in steps]


def detect_pre(tokenizer_json: dict[str, Any]) -> list[str]:
    """The llama.cpp pre-tokenizer names that reproduce this HF tokenizer's pre-tokenizer."""
    steps = _steps(tokenizer_json.get("pre_tokenizer"))
    return [name for name, table in PRE_TOKENIZERS.items() if _steps_equal(steps, table)]


def _steps_equal(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(_steps({"type": "Sequence", "pretokenizers": b}), sort_keys=True)


def check_pre(tokenizer_json: dict[str, Any], pre: str) -> None:
    """Raise unless llama.cpp's ``pre`` tokenizes like this HF tokenizer."""
    if pre not in PRE_TOKENIZERS:
        raise ConfigError(f"tokenizer_pre {pre!r} is not supported; supported: {sorted(PRE_TOKENIZERS)}")
    matches = detect_pre(tokenizer_json)
    if pre not in matches:
        found = matches or "none of the supported ones"
        raise ConfigError(f"tokenizer_pre {pre!r} does not match the tokenizer's pre-tokenizer (it matches {found})")


def hf_pre_tokenizer(pre: str) -> Any:
    """A ``tokenizers`` pre-tokenizer object for a llama.cpp pre-tokenizer name."""
    if pre not in PRE_TOKENIZERS:
        raise ConfigError(f"tokenizer_pre {pre!r} is not supported; supported: {sorted(PRE_TOKENIZERS)}")
    steps = [dict(step) for step in PRE_TOKENIZERS[pre]]
    data = steps[0] if len(steps) == 1 else {"type": "Sequence", "pretokenizers": steps}
    return _from_json(data)


def _from_json(data: dict[str, Any]) -> Any:
    """Build a pre-tokenizer from its JSON form through a throwaway Tokenizer."""
    from tokenizers import Tokenizer, models

    tok = Tokenizer(models.BPE())
    blob = json.loads(tok.to_str())
    blob["pre_tokenizer"] = data
    return Tokenizer.from_str(json.dumps(blob)).pre_tokenizer


def train_bpe(corpus: list[str], vocab_size: int, chat_format: str, pre: str) -> Any:
    """Train a byte-level BPE tokenizer on ``corpus``; returns a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, trainers
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    specials = SPECIAL_TOKENS[chat_format]
    tok = Tokenizer(models.BPE(ignore_merges=pre in IGNORE_MERGES))
    tok.pre_tokenizer = hf_pre_tokenizer(pre)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    eos = CHAT_FORMATS[chat_format]["end_of_turn"]
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=specials[0],
        eos_token=eos,
        pad_token=specials[0],
        unk_token=None,
        chat_template=chat_template(chat_format),
        clean_up_tokenization_spaces=False,
    )


def tokenizer_json(tokenizer: Any) -> dict[str, Any]:
    return json.loads(tokenizer.backend_tokenizer.to_str())


@dataclass(frozen=True)
class GGUFVocab:
    """What the GGUF's tokenizer.ggml.* keys hold."""

    tokens: list[str]
    types: list[int]
    merges: list[str]
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None
    chat_template: str | None


TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED = 1, 3, 4, 5


def gguf_vocab(tokenizer: Any, n_vocab: int) -> GGUFVocab:
    """The GGUF vocab of an HF byte-level BPE tokenizer, padded to the model's n_vocab."""
    blob = tokenizer_json(tokenizer)
    if blob["model"]["type"] != "BPE":
        raise ConfigError(f"only byte-level BPE tokenizers are supported, got {blob['model']['type']}")
    vocab = tokenizer.get_vocab()
    if len(vocab) > n_vocab:
        raise ConfigError(f"the tokenizer has {len(vocab)} tokens, more than the model's vocab_size {n_vocab}")
    by_id = {i: t for t, i in vocab.items()}
    missing = [i for i in range(len(vocab)) if i not in by_id]
    if missing:
        raise ConfigError(f"tokenizer ids are not contiguous: missing {missing[:5]}")
    added = {a["id"]: a for a in blob.get("added_tokens", [])}
    types = [
        (TOKEN_CONTROL if added[i]["special"] else TOKEN_USER_DEFINED) if i in added else TOKEN_NORMAL
        for i in range(len(vocab))
    ]
    tokens = [by_id[i] for i in range(len(vocab))]
    for i in range(len(vocab), n_vocab):
        tokens.append(f"[PAD{i}]")
        types.append(TOKEN_UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in blob["model"]["merges"]]
    return GGUFVocab(
        tokens=tokens,
        types=types,
        merges=merges,
        bos_id=tokenizer.bos_token_id,
        eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
        chat_template=tokenizer.chat_template,
    )


def load_tokenizer(path: str | Path) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(path))


def tokenizer_from_gguf(gguf_path: str | Path) -> tuple[Any, str]:
    """The HF tokenizer of a GGUF file, with the pre-tokenizer its ``tokenizer.ggml.pre`` names."""
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    gguf_path = Path(gguf_path)
    field = GGUFReader(str(gguf_path)).fields.get("tokenizer.ggml.pre")
    pre = str(field.contents()) if field is not None else "gpt-2"
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    tokenizer.backend_tokenizer.pre_tokenizer = hf_pre_tokenizer(pre)
    return tokenizer, pre

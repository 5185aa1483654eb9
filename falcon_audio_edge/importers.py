"""Import real pretrained parts: a Llama-architecture LLM from an HF folder or a GGUF file.

``fa-edge init --llm PATH`` puts such an LLM behind a (fresh) encoder and connector. The decoder dims, the
chat format and the llama.cpp pre-tokenizer are read from the LLM itself; what cannot be recognised is an
error, never a guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from falcon_audio_edge.config import DecoderDims
from falcon_audio_edge.errors import CheckpointError, ConfigError, FaEdgeError
from falcon_audio_edge.tokenizer import detect_pre, tokenizer_from_gguf, tokenizer_json

# chat format -> special tokens its prompts are written with
CHAT_FORMAT_TOKENS = {"chatml": ("<|im_start|>", "<|im_end|>"), "falcon3": ("<|user|>", "<|assistant|>")}


@dataclass
class ImportedLLM:
    model: Any  # transformers LlamaForCausalLM, f32
    tokenizer: Any
    dims: DecoderDims
    tokenizer_pre: str
    chat_format: str


def decoder_dims(config: Any) -> DecoderDims:
    """DecoderDims of a transformers LlamaConfig; other architectures are refused."""
    if config.model_type != "llama":
        raise ConfigError(f"only Llama-architecture LLMs are supported (Falcon3 is one), got {config.model_type!r}")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise ConfigError("LLMs with attention or MLP biases are not supported")
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ConfigError(f"rope scaling {rope.get('rope_type')!r} is not supported")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return DecoderDims(
        hidden=config.hidden_size,
        n_layers=config.num_hidden_layers,
        n_heads=config.num_attention_heads,
        n_kv_heads=config.num_key_value_heads,
        head_dim=head_dim,
        ffn_dim=config.intermediate_size,
        vocab_size=config.vocab_size,
        rope_theta=float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))),
        rms_eps=float(config.rms_norm_eps),
        tie_embeddings=bool(config.tie_word_embeddings),
        max_positions=config.max_position_embeddings,
    )


def chat_format_of(tokenizer: Any) -> str:
    vocab = tokenizer.get_vocab()
    for name, tokens in CHAT_FORMAT_TOKENS.items():
        if all(t in vocab for t in tokens):
            return name
    raise ConfigError(f"the LLM's tokenizer uses none of the known chat formats {sorted(CHAT_FORMAT_TOKENS)}")


def _pre_of_hf(tokenizer: Any, config: Any) -> str:
    matches = detect_pre(tokenizer_json(tokenizer))
    if not matches:
        raise ConfigError("the LLM's pre-tokenizer matches none that llama.cpp knows (see tokenizer.PRE_TOKENIZERS)")
    name = str(getattr(config, "_name_or_path", "")).lower()
    if "falcon3" in matches and "falcon3" in name:
        return "falcon3"
    return next(m for m in matches if m != "falcon3")


def load_llm(path: str | Path) -> ImportedLLM:
    """A Llama-architecture LLM from an HF folder (config.json + safetensors) or a .gguf file."""
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"LLM not found: {path}")
    try:
        if path.suffix == ".gguf":
            tokenizer, pre = tokenizer_from_gguf(path)
            model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype="float32")
        else:
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype="float32")
            tokenizer = PreTrainedTokenizerFast.from_pretrained(str(path))
            pre = _pre_of_hf(tokenizer, model.config)
    except FaEdgeError:
        raise
    except Exception as exc:  # transformers and gguf-py raise many kinds for a file that is not a model
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(f"cannot load the LLM {path} (a .gguf file or an HF folder): {first}") from None
    return ImportedLLM(
        model=model.eval(),
        tokenizer=tokenizer,
        dims=decoder_dims(model.config),
        tokenizer_pre=pre,
        chat_format=chat_format_of(tokenizer),
    )

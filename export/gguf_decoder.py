"""Write the Llama-architecture decoder as a GGUF that plain llama.cpp loads.

Tensor names map through declarative tables (as llama.cpp's gguf-py
``tensor_mapping.py``): every checkpoint tensor must map, and every tensor the
GGUF needs must be present, or the export fails naming the tensor.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from falcon_audio_edge.config import ModelDims
from falcon_audio_edge.errors import ExportError
from falcon_audio_edge.tokenizer import check_pre, gguf_vocab, tokenizer_json

ARCH = "llama"
DIMS_KEY = "falcon_audio_edge.dims"
VERSION_KEY = "falcon_audio_edge.version"

GLOBAL_TENSORS = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
BLOCK_TENSORS = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
BLOCK_RE = re.compile(r"model\.layers\.(\d+)\.(.+)")
DECODER_TYPES = ("f32", "f16")


def gguf_name(hf_name: str) -> str:
    """The GGUF tensor name of an HF Llama tensor; an unmapped name is an error."""
    if hf_name in GLOBAL_TENSORS:
        return GLOBAL_TENSORS[hf_name]
    match = BLOCK_RE.fullmatch(hf_name)
    if match and match.group(2) in BLOCK_TENSORS:
        return f"blk.{match.group(1)}.{BLOCK_TENSORS[match.group(2)]}"
    raise ExportError(f"decoder tensor {hf_name!r} has no GGUF mapping")


def gguf_tokens(reader, path) -> list[str]:
    """The vocabulary a GGUF holds (``reader``: its gguf.GGUFReader), as strings."""
    field = reader.fields.get("tokenizer.ggml.tokens")
    if field is None:
        raise ExportError(f"{path} has no tokenizer.ggml.tokens (not a GGUF LLM with its tokenizer)")
    return [bytes(field.parts[i]).decode("utf-8", "replace") for i in field.data]


def expected_gguf_names(dims: ModelDims) -> set[str]:
    names = {"token_embd.weight", "output_norm.weight"}
    if not dims.decoder.tie_embeddings:
        names.add("output.weight")
    for i in range(dims.decoder.n_layers):
        names.update(f"blk.{i}.{v}" for v in BLOCK_TENSORS.values())
    return names


def permute_rope(w: np.ndarray, n_heads: int) -> np.ndarray:
    """HF rotary layout (two halves per head) -> GGML's (interleaved pairs), as llama.cpp's converter does."""
    rows = w.shape[0]
    # (H*hd, in) -> (H, 2, hd/2, in) -> (H, hd/2, 2, in) -> (H*hd, in)
    return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def decoder_tensors(llm, dims: ModelDims, decoder_type: str):
    """Yield (gguf name, numpy array) for every decoder tensor, converted to the output type."""
    if decoder_type not in DECODER_TYPES:
        raise ExportError(f"unknown decoder type {decoder_type!r}; choose one of {DECODER_TYPES}")
    dec = dims.decoder
    seen = set()
    for hf_name, tensor in llm.state_dict().items():
        if dec.tie_embeddings and hf_name == "lm_head.weight":
            continue
        name = gguf_name(hf_name)
        data = tensor.detach().float().cpu().numpy()
        if name.endswith("attn_q.weight"):
            data = permute_rope(data, dec.n_heads)
        elif name.endswith("attn_k.weight"):
            data = permute_rope(data, dec.n_kv_heads)
        if decoder_type == "f16" and data.ndim == 2:
            data = data.astype(np.float16)
        seen.add(name)
        yield name, np.ascontiguousarray(data)
    missing = expected_gguf_names(dims) - seen
    if missing:
        raise ExportError(f"decoder is missing tensors {sorted(missing)[:5]}")


def write_gguf(llm, tokenizer, dims: ModelDims, path: Path, decoder_type: str, version: str) -> Path:
    import gguf

    check_pre(tokenizer_json(tokenizer), dims.tokenizer_pre)
    writer = gguf.GGUFWriter(str(path), ARCH)
    _write_hparams(writer, dims, decoder_type)
    _write_tokenizer(writer, tokenizer, dims)
    writer.add_string(DIMS_KEY, dims.to_json())
    writer.add_string(VERSION_KEY, version)
    for name, data in decoder_tensors(llm, dims, decoder_type):
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _write_hparams(writer, dims: ModelDims, decoder_type: str) -> None:
    import gguf

    dec = dims.decoder
    writer.add_name(dims.name)
    writer.add_context_length(dec.max_positions)
    writer.add_embedding_length(dec.hidden)
    writer.add_block_count(dec.n_layers)
    writer.add_feed_forward_length(dec.ffn_dim)
    writer.add_head_count(dec.n_heads)
    writer.add_head_count_kv(dec.n_kv_heads)
    writer.add_key_length(dec.head_dim)
    writer.add_value_length(dec.head_dim)
    writer.add_rope_dimension_count(dec.head_dim)
    writer.add_rope_freq_base(dec.rope_theta)
    writer.add_layer_norm_rms_eps(dec.rms_eps)
    writer.add_vocab_size(dec.vocab_size)
    ftype = gguf.LlamaFileType.MOSTLY_F16 if decoder_type == "f16" else gguf.LlamaFileType.ALL_F32
    writer.add_file_type(ftype)


def _write_tokenizer(writer, tokenizer, dims: ModelDims) -> None:
    vocab = gguf_vocab(tokenizer, dims.decoder.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(dims.tokenizer_pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(vocab.merges)
    for setter, value in (
        (writer.add_bos_token_id, vocab.bos_id),
        (writer.add_eos_token_id, vocab.eos_id),
        (writer.add_pad_token_id, vocab.pad_id),
    ):
        if value is not None:
            setter(value)
    writer.add_add_bos_token(dims.prompt.add_bos)
    writer.add_add_eos_token(False)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)

"""A bundle with one LLM: the base LLM's own GGUF as decoder.gguf and what training changed in it as a llama.cpp
LoRA adapter (adapter.gguf). The listening context applies the adapter; the answering context is the base alone.

The adapter's tensors map through the decoder's tables (``gguf_decoder.gguf_name``), every one or the export
fails; ``lora_b`` of the query and key projections takes the same rotary permutation as their weights. Before the
base joins the bundle, each of its tensors is checked against the checkpoint's less the adapter's delta: same
names, same shapes, and values that differ by no more than quantization does.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from falcon_audio_edge.export.gguf_decoder import ARCH, decoder_tensors, gguf_name, gguf_tokens, permute_rope

from falcon_audio_edge.errors import ExportError
from falcon_audio_edge.lora import LoraSettings, pair_adapters
from falcon_audio_edge.tokenizer import gguf_vocab

# the base's tensors may differ from the checkpoint's (less the adapter) by this much rms, relative to their rms:
# llama.cpp's 4-8 bit types move a tensor by about 0.01-0.1 of it, unrelated weights of the same scale by sqrt(2)
BASE_TOLERANCE = 0.35


def read_adapter(path: Path) -> tuple[dict, LoraSettings]:
    """The checkpoint's adapter file: peft-named LoRA tensors (float32) and their settings."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            settings = LoraSettings.from_metadata(f.metadata() or {}, str(path))
            tensors = {k: f.get_tensor(k).float() for k in f.keys()}
    except Exception as exc:
        raise ExportError(f"cannot read the LoRA adapter {path}: {exc}") from exc
    return tensors, settings


def adapter_tensors(path: Path, dims) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], LoraSettings]:
    """``{GGUF weight name: (lora_a (r, in), lora_b (out, r))}`` in the GGUF's layout, and the settings."""
    tensors, settings = read_adapter(path)
    out = {}
    for module, (a, b) in pair_adapters(tensors, str(path)).items():
        name = gguf_name(f"{module}.weight")  # an unmapped layer is an error
        if a.shape[0] != settings.r or b.shape[1] != settings.r:
            raise ExportError(f"{path}: {module} LoRA shapes {tuple(a.shape)}, {tuple(b.shape)} are not of rank "
                              f"{settings.r}")  # fmt: skip
        b = b.numpy()
        if name.endswith("attn_q.weight"):
            b = permute_rope(b, dims.decoder.n_heads)
        elif name.endswith("attn_k.weight"):
            b = permute_rope(b, dims.decoder.n_kv_heads)
        out[name] = (a.numpy(), np.ascontiguousarray(b))
    return out, settings


def write_adapter(path: Path, dims, out: Path, version: str) -> Path:
    """adapter.gguf: what llama.cpp's ``llama_adapter_lora_init`` reads (float16 A and B, alpha as trained)."""
    import gguf
    from falcon_audio_edge.export.gguf_decoder import DIMS_KEY, VERSION_KEY

    tensors, settings = adapter_tensors(path, dims)
    writer = gguf.GGUFWriter(str(out), ARCH)
    writer.add_type("adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(settings.alpha))
    writer.add_string(DIMS_KEY, dims.to_json())
    writer.add_string(VERSION_KEY, version)
    for name, (a, b) in sorted(tensors.items()):
        writer.add_tensor(f"{name}.lora_a", a.astype(np.float16))
        writer.add_tensor(f"{name}.lora_b", b.astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def base_file_type(reader) -> str:
    """The GGUF's file type as a decoder type name: ``q4_1``, ``f16``, ..."""
    import gguf

    field = reader.fields.get("general.file_type")
    if field is None:
        return "unknown"
    value = int(field.parts[field.data[0]][0])
    try:
        name = gguf.LlamaFileType(value).name
    except ValueError:
        return f"type{value}"
    return name.removeprefix("MOSTLY_").removeprefix("ALL_").lower()


def check_base(ckpt, base: Path) -> str:
    """The base GGUF is the LLM the checkpoint's adapter was trained on: same architecture and vocabulary, every
    tensor there with its shape, its values the checkpoint's less the adapter's delta up to quantization, and
    nearer to those than to the checkpoint's own (a merged decoder already holds the adapters). Returns its type."""
    reader = read_base(ckpt, base)
    tensors = {t.name: t for t in reader.tensors}
    ours = dict(decoder_tensors(ckpt.model.llm, ckpt.dims, "f32"))
    if set(ours) != set(tensors):
        missing, unexpected = sorted(set(ours) - set(tensors))[:5], sorted(set(tensors) - set(ours))[:5]
        raise ExportError(
            f"base LLM {base} has other tensors than the model: missing {missing}, unexpected {unexpected}"
        )
    adapters, settings = adapter_tensors(ckpt.adapter_path, ckpt.dims)
    from_base = from_merged = 0.0  # squared distances of the adapted tensors to the base and to the merged weights
    for name, want in ours.items():
        delta = (adapters[name][1].astype(np.float64) @ adapters[name][0]) * settings.scale if name in adapters else 0
        got = compare_tensor(base, name, tensors[name], want - delta)
        if name in adapters:
            from_base += float(np.sum(np.square(got - (want - delta))))
            from_merged += float(np.sum(np.square(got - want)))
    if from_base >= from_merged:
        why = "it already holds them (a merged decoder?); give the LLM the model was trained from"
        raise ExportError(f"base LLM {base} is nearer the checkpoint's weights than those less its adapters: {why}")
    return base_file_type(reader)


def read_base(ckpt, base: Path):
    """The base GGUF's reader, after its architecture and vocabulary are checked against the checkpoint's."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(base))
        arch = reader.fields["general.architecture"].contents()
    except Exception as exc:  # gguf-py raises several kinds for a file that is not a GGUF
        reason = str(exc)[:200] or type(exc).__name__
        raise ExportError(f"base LLM {base} is not a readable GGUF file: {reason}") from None
    if arch != ARCH:
        raise ExportError(f"base LLM {base} is a {arch!r} model; the checkpoint's LLM is {ARCH!r}")
    theirs = gguf_tokens(reader, base)
    if theirs != gguf_vocab(ckpt.tokenizer, ckpt.dims.decoder.vocab_size).tokens:
        raise ExportError(f"base LLM {base} has another vocabulary than the model ({len(theirs)} tokens)")
    return reader


def compare_tensor(base: Path, name: str, tensor, want: np.ndarray) -> np.ndarray:
    """One base tensor against the checkpoint's (less the adapter's delta): its shape, then its values; the base
    tensor, dequantized."""
    import gguf

    got = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    if got.shape != want.shape:
        raise ExportError(f"base LLM {base}: {name} has shape {got.shape}, the model's is {want.shape}")
    off = rms(got - want) / max(rms(want), 1e-12)
    if off > BASE_TOLERANCE:
        raise ExportError(f"base LLM {base}: {name} is {off:.2f} of its size away from the checkpoint's weights less "
                          f"the adapter (at most {BASE_TOLERANCE}): not the LLM the model was trained on")  # fmt: skip
    return got


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def add_base_and_adapter(ckpt, base: Path, tmp: Path, version: str) -> str:
    """decoder.gguf (the base, copied as it is) and adapter.gguf into the bundle folder; the base's type."""
    from falcon_audio_edge.runtime.bundle import ADAPTER_FILE, DECODER_FILE

    base_type = check_base(ckpt, base)
    write_adapter(ckpt.adapter_path, ckpt.dims, tmp / ADAPTER_FILE, version)
    shutil.copyfile(base, tmp / DECODER_FILE)
    return base_type

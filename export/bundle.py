"""``fa-edge export``: a checkpoint -> a bundle folder (encoder.onnx, decoder.gguf, manifest.json).

The bundle is written under a temporary sibling folder and moved into place
only when complete, so an interrupted export leaves nothing that looks like a
bundle.
"""

from __future__ import annotations

import datetime as _dt
from importlib import metadata
from pathlib import Path

from falcon_audio_edge.export.gguf_decoder import DECODER_TYPES, write_gguf
from falcon_audio_edge.export.onnx_encoder import export_encoder

from falcon_audio_edge.checkpoint import load_checkpoint
from falcon_audio_edge.errors import ExportError
from falcon_audio_edge.runtime.bundle import DECODER_FILE, ENCODER_FILE, write_manifest
from falcon_audio_edge.staging import staged_dir


def versions() -> dict[str, str]:
    names = ("falcon-audio-edge", "torch", "transformers", "onnx", "gguf", "onnxruntime", "llama-cpp-python")
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def export_bundle(checkpoint: str | Path, out: str | Path, decoder_type: str = "f16", force: bool = False) -> Path:
    if decoder_type not in DECODER_TYPES:
        raise ExportError(f"unknown decoder type {decoder_type!r}; choose one of {DECODER_TYPES}")
    out = Path(out)
    if Path(checkpoint).resolve() == out.resolve():
        raise ExportError(f"output folder {out} is the checkpoint folder; choose another")
    ckpt = load_checkpoint(checkpoint)
    vers = versions()
    with staged_dir(out, force) as tmp:
        export_encoder(ckpt.model, tmp / ENCODER_FILE)
        write_gguf(ckpt.model.llm, ckpt.tokenizer, ckpt.dims, tmp / DECODER_FILE, decoder_type,
                   vers.get("falcon-audio-edge", "0"))  # fmt: skip
        write_manifest(
            tmp,
            ckpt.dims,
            {
                "encoder": {"dtype": "fp32", "input": "mel", "output": "audio_embeds"},
                "decoder": {"type": decoder_type, "arch": "llama"},
                "source": {"checkpoint": str(Path(checkpoint).resolve())},
                "versions": vers,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            },
        )
    return out

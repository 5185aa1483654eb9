"""``fa-edge export``: a checkpoint -> a bundle folder (encoder.onnx, decoder.gguf, manifest.json; with a base
LLM and a checkpoint that keeps its LoRA adapters, decoder.gguf is that base and adapter.gguf holds the adapters).

The bundle is written under a temporary sibling folder and moved into place only when complete, so an
interrupted export leaves nothing that looks like a bundle. A quantized decoder or encoder type is
reached through an f16 GGUF / fp32 ONNX intermediate, quantized in the same run. At the end the bundle is
verified against the checkpoint and the figures go into the manifest.
"""

from __future__ import annotations

import datetime as _dt
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

from falcon_audio_edge.export.gguf_adapter import add_base_and_adapter
from falcon_audio_edge.export.gguf_decoder import DECODER_TYPES, gguf_tokens, write_gguf
from falcon_audio_edge.export.onnx_encoder import export_encoder

from falcon_audio_edge.checkpoint import WEIGHTS_NAME, load_checkpoint
from falcon_audio_edge.errors import ExportError
from falcon_audio_edge.files import staged_dir
from falcon_audio_edge.runtime.bundle import (
    ADAPTER_FILE,
    ANSWER_FILE,
    CTC_FILE,
    DECODER_FILE,
    ENCODER_FILE,
    is_bundle,
    write_manifest,
)
from falcon_audio_edge.runtime.charnet import CHAR_HEAD_FILE, copy_char_head
from falcon_audio_edge.settings import DecodingSettings


def versions() -> dict[str, str]:
    names = ("falcon-audio-edge", "torch", "transformers", "onnx", "gguf", "onnxruntime", "llama-cpp-python")
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def check_types(decoder_type: str, encoder_type: str) -> None:
    from falcon_audio_edge.quantize.decoder import DECODER_QUANTS
    from falcon_audio_edge.quantize.encoder import ENCODER_TYPES

    valid = sorted(set(DECODER_TYPES) | set(DECODER_QUANTS))
    if decoder_type not in valid:
        raise ExportError(f"unknown decoder type {decoder_type!r}; valid: {', '.join(valid)}")
    if encoder_type not in ENCODER_TYPES:
        raise ExportError(f"unknown encoder type {encoder_type!r}; valid: {', '.join(ENCODER_TYPES)}")


def export_bundle(
    checkpoint: str | Path,
    out: str | Path,
    decoder_type: str | None = None,
    encoder_type: str = "fp32",
    force: bool = False,
    verify: bool = True,
    f16_embeddings: bool | None = None,
    answer_llm: str | Path | None = None,
    decoding: dict[str, Any] | None = None,
) -> Path:
    """``answer_llm``: a GGUF of the text LLM the model was built from (listen-first turns: it answers what the
    model heard); its vocabulary must be the model's, token for token. Where the checkpoint keeps the LoRA
    adapters it was trained with, that GGUF is the bundle's one decoder, as it is, and the adapters go beside it
    (adapter.gguf; ``decoder_type`` does not apply); otherwise it is copied in as answer.gguf beside the model's
    own decoder of ``decoder_type`` (default f16). ``decoding``: the bundle's own transcription search settings
    (``settings.DecodingSettings``), written into its manifest."""
    from falcon_audio_edge.quantize.bundle import f16_embeddings_for

    check_types(decoder_type or "f16", encoder_type)
    DecodingSettings().updated(decoding or {}, "decoding")
    if answer_llm is not None and not Path(answer_llm).is_file():
        raise ExportError(f"answer LLM not found: {answer_llm}")
    inputs = (Path(checkpoint), *([Path(answer_llm)] if answer_llm is not None else []))
    writer = staged_dir(Path(out), force, inputs=inputs, replaceable=is_bundle)
    writer.check()  # before the checkpoint is loaded
    ckpt = load_checkpoint(checkpoint)
    on_base = answer_llm is not None and ckpt.adapter_path is not None
    if on_base and decoder_type is not None:
        why = "under the checkpoint's LoRA adapters; bring the base GGUF in the type you want"
        raise ExportError(
            f"decoder type {decoder_type!r}: this bundle's decoder is the base LLM {answer_llm} as it is, {why}"
        )
    decoder_type = decoder_type or "f16"
    f16_embeddings = f16_embeddings_for(decoder_type, f16_embeddings) and decoder_type not in DECODER_TYPES
    vers = versions()
    # about what the bundle takes at most: the checkpoint's f32 weights (and the answer model)
    writer.need_bytes = sum(p.stat().st_size for p in (Path(checkpoint) / WEIGHTS_NAME, *inputs[1:]))
    with writer as tmp:
        version = vers.get("falcon-audio-edge", "0")
        if on_base:
            decoder = {"type": add_base_and_adapter(ckpt, Path(answer_llm), tmp, version), "arch": "llama",
                       "adapter": ADAPTER_FILE, "base": Path(answer_llm).name}  # fmt: skip
            _write_files(ckpt, tmp, None, encoder_type, version, False)
        else:
            decoder = {"type": decoder_type, "arch": "llama", "f16_embeddings": f16_embeddings}
            _write_files(ckpt, tmp, decoder_type, encoder_type, version, f16_embeddings)
            if answer_llm is not None:
                add_answer_llm(Path(answer_llm), tmp)
        extra = {
            "encoder": {"dtype": encoder_type, "input": "mel", "output": "audio_embeds"},
            "decoder": decoder,
            "source": {"checkpoint": str(Path(checkpoint).resolve())},
            **({"decoding": decoding} if decoding else {}),
            "versions": vers,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        write_manifest(tmp, ckpt.dims, extra)
        if verify:
            from falcon_audio_edge.quantize.bundle import attach_verification

            from falcon_audio_edge.reference import TorchBackend
            from falcon_audio_edge.runtime.engine import AudioChat

            attach_verification(tmp, ckpt.dims, extra, AudioChat(TorchBackend(ckpt), ckpt.dims))
    return writer.out


def _write_files(
    ckpt, tmp: Path, decoder_type: str | None, encoder_type: str, version: str, f16_embeddings: bool
) -> None:
    """Write the final encoder.onnx and decoder.gguf (none where ``decoder_type`` is None: the base is the
    decoder) into ``tmp``; quantized types go through an fp32 ONNX / f16 GGUF intermediate in ``tmp/.stage``,
    removed afterwards."""
    from falcon_audio_edge.quantize.decoder import quantize_decoder
    from falcon_audio_edge.quantize.encoder import convert_encoder

    from falcon_audio_edge.settings import default_threads

    stage = tmp / ".stage"
    stage.mkdir()
    if encoder_type == "fp32":
        export_encoder(ckpt.model, tmp / ENCODER_FILE)
    else:
        export_encoder(ckpt.model, stage / ENCODER_FILE)
        convert_encoder(stage / ENCODER_FILE, tmp / ENCODER_FILE, encoder_type, "fp32", False)
    if decoder_type in DECODER_TYPES:
        write_gguf(ckpt.model.llm, ckpt.tokenizer, ckpt.dims, tmp / DECODER_FILE, decoder_type, version)
    elif decoder_type is not None:
        write_gguf(ckpt.model.llm, ckpt.tokenizer, ckpt.dims, stage / DECODER_FILE, "f16", version)
        quantize_decoder(stage / DECODER_FILE, tmp / DECODER_FILE, decoder_type, "f16", False, default_threads(),
                         f16_embeddings)  # fmt: skip
    shutil.rmtree(stage)
    if ckpt.model.ctc is not None:
        write_ctc_head(ckpt.model.ctc, tmp / CTC_FILE)
    add_char_head(ckpt, tmp)


def add_char_head(ckpt, tmp: Path) -> None:
    """The checkpoint's character CTC head (char_head.npz, train/charhead.py), if it has one, checked against
    the model's width before it joins the bundle."""
    src = Path(ckpt.path) / CHAR_HEAD_FILE
    if src.is_file():
        copy_char_head(src, tmp / CHAR_HEAD_FILE, ckpt.dims.decoder.hidden)


def gguf_vocab(path: Path) -> list[str]:
    import gguf

    return gguf_tokens(gguf.GGUFReader(str(path)), path)


def add_answer_llm(src: Path, bundle: Path) -> None:
    """Copy the answer LLM into the bundle after checking it reads and writes the same tokens as its decoder."""
    try:
        theirs = gguf_vocab(src)
    except Exception as exc:  # gguf-py raises several kinds for a file that is not a GGUF
        raise ExportError(
            f"answer LLM {src} is not a readable GGUF file: {str(exc)[:200] or type(exc).__name__}"
        ) from None
    ours = gguf_vocab(bundle / DECODER_FILE)
    if ours != theirs:
        first = next(
            (i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), min(len(ours), len(theirs))
        )
        raise ExportError(f"answer LLM {src} has another vocabulary than the model ({len(theirs)} tokens vs "
                          f"{len(ours)}; first difference at id {first})")  # fmt: skip
    shutil.copyfile(src, bundle / ANSWER_FILE)


def write_ctc_head(head, path: Path) -> None:
    """The CTC head's own weights for the runtime (its token scores use the GGUF's token embeddings)."""
    import numpy as np

    with open(path, "wb") as f:
        np.savez(
            f,
            blank_weight=head.blank.weight.detach().float().numpy()[0],  # (1, H) -> (H,)
            blank_bias=head.blank.bias.detach().float().numpy()[0],
            log_scale=head.log_scale.detach().float().numpy(),
        )

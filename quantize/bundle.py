"""``fa-edge quantize``: a bundle -> a new, complete bundle with a quantized decoder and/or encoder.

The new bundle gets a new manifest (types, checksums, where it came from) and, where its reference
checkpoint can be found, the verification figures against it.
"""

from __future__ import annotations

import datetime as _dt
import shutil
from pathlib import Path
from typing import Any

from falcon_audio_edge.export.bundle import versions
from falcon_audio_edge.quantize.decoder import F16_EMBEDDINGS_BY_DEFAULT, check_decoder_type, quantize_decoder
from falcon_audio_edge.quantize.encoder import check_encoder_type, convert_encoder

from falcon_audio_edge.errors import ExportError
from falcon_audio_edge.files import staged_dir
from falcon_audio_edge.runtime.bundle import (
    ADAPTER_FILE,
    ANSWER_FILE,
    CTC_FILE,
    DECODER_FILE,
    ENCODER_FILE,
    is_bundle,
    read_bundle,
    write_manifest,
)
from falcon_audio_edge.runtime.charnet import CHAR_HEAD_FILE
from falcon_audio_edge.settings import default_threads


def f16_embeddings_for(decoder: str, f16_embeddings: bool | None) -> bool:
    return decoder in F16_EMBEDDINGS_BY_DEFAULT if f16_embeddings is None else f16_embeddings


def quantize_files(src: Path, dst: Path, manifest: dict[str, Any], decoder: str | None, encoder: str,
                   allow_requantize: bool, f16_embeddings: bool) -> None:  # fmt: skip
    """Write dst/encoder.onnx and dst/decoder.gguf converted from the bundle files in src (the CTC heads and the
    answer model copied as they are, where it has them; ``decoder`` None: the decoder too, with its adapter)."""
    check_encoder_type(encoder)
    convert_encoder(src / ENCODER_FILE, dst / ENCODER_FILE, encoder, manifest["encoder"]["dtype"], allow_requantize)
    kept = [CTC_FILE, CHAR_HEAD_FILE, ANSWER_FILE]  # the CTC heads and the answer model: copied as they are
    if decoder is None:
        kept += [DECODER_FILE, ADAPTER_FILE]
    else:
        check_decoder_type(decoder)
        quantize_decoder(src / DECODER_FILE, dst / DECODER_FILE, decoder, manifest["decoder"]["type"],
                         allow_requantize, default_threads(), f16_embeddings)  # fmt: skip
    for name in kept:
        if name in manifest["files"]:
            shutil.copyfile(src / name, dst / name)


def quantize_bundle(
    src: str | Path,
    out: str | Path,
    decoder: str | None = None,
    encoder: str = "int8",
    allow_requantize: bool = False,
    force: bool = False,
    reference: str | Path | None = None,
    verify: bool = True,
    f16_embeddings: bool | None = None,
) -> Path:
    """``decoder``: the decoder's new type (default q8_0); a bundle whose decoder is a base LLM under LoRA adapters
    keeps both as they are (bring the base in another type to ``fa-edge export`` instead)."""
    if decoder is not None:
        check_decoder_type(decoder)
    check_encoder_type(encoder)
    src, out = Path(src), Path(out)
    writer = staged_dir(out, force, inputs=(src,), replaceable=is_bundle)
    writer.check()  # before the source is read and hashed
    source = read_bundle(src, verify=True)
    manifest = source.manifest
    if source.adapter_path is not None and decoder is not None:
        raise ExportError(f"--decoder {decoder}: {src}'s decoder is its base LLM ({source.decoder_type}) under LoRA "
                          "adapters and is kept as it is; export with the base GGUF in the type you want")  # fmt: skip
    if source.adapter_path is not None and f16_embeddings is not None:
        raise ExportError(f"--f16-embeddings: {src}'s decoder is its base LLM, kept as it is")
    if source.adapter_path is None:
        decoder = decoder or "q8_0"
    f16_embeddings = f16_embeddings_for(decoder, f16_embeddings) if decoder else False
    writer.need_bytes = source.size_bytes  # the quantized bundle is no larger than its source
    with writer as tmp:
        quantize_files(src, tmp, manifest, decoder, encoder, allow_requantize, f16_embeddings)
        extra = {
            "encoder": {**manifest["encoder"], "dtype": encoder},
            "decoder": manifest["decoder"]
            if decoder is None
            else {**manifest["decoder"], "type": decoder, "f16_embeddings": f16_embeddings},  # fmt: skip
            "source": {**manifest.get("source", {}), "bundle": str(src.resolve())},
            **({"decoding": manifest["decoding"]} if "decoding" in manifest else {}),  # the source's own search
            "versions": versions(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        write_manifest(tmp, source.dims, extra)
        if verify:
            attach_verification(tmp, source.dims, extra, reference or manifest.get("source", {}).get("checkpoint"))
    return out


def attach_verification(folder: Path, dims: Any, extra: dict[str, Any], reference: Any) -> None:
    """Verify the bundle in ``folder`` against its checkpoint and store the figures in its manifest."""
    from falcon_audio_edge.checkpoint import is_checkpoint
    from falcon_audio_edge.verify import verify_bundle

    if reference is None or (not hasattr(reference, "backend") and not is_checkpoint(reference)):
        extra["verification"] = {"skipped": f"reference checkpoint not found: {reference}"}
    else:
        report = verify_bundle(folder, reference, max_tokens=16, n_builtin=2, check_files=False)
        extra["verification"] = report.to_dict()
    write_manifest(folder, dims, extra)

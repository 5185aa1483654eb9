"""Decoder quantization with llama.cpp's quantizer (``llama_model_quantize``) through llama-cpp-python."""

from __future__ import annotations

from pathlib import Path

from falcon_audio_edge.errors import FaEdgeError

# our name -> llama.cpp's LLAMA_FTYPE_* constant name
DECODER_QUANTS = {
    "f16": "LLAMA_FTYPE_MOSTLY_F16",
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1",
}
FLOAT_TYPES = ("f32", "f16")
GGML_TYPE_F16 = 1
# types whose token embedding and output projection stay f16 by default: measured on the tiny random model
# (660 positions), q8_0 top-1 agreement rose from 0.971 to 0.999 (docs/quantization.md)
F16_EMBEDDINGS_BY_DEFAULT = ("q8_0",)


def check_decoder_type(name: str) -> None:
    if name not in DECODER_QUANTS:
        raise FaEdgeError(f"unknown decoder quant type {name!r}; valid: {', '.join(DECODER_QUANTS)}")


def quantize_decoder(
    src: Path, dst: Path, qtype: str, source_type: str, allow_requantize: bool, threads: int,
    f16_embeddings: bool = False,
) -> None:  # fmt: skip
    """Write ``dst`` as ``qtype`` from ``src``; a quantized source needs ``allow_requantize``.

    ``f16_embeddings`` keeps the token embedding and the output projection (where the logits are made; the
    same tensor when they are tied) at f16.
    """
    import llama_cpp as lc

    from falcon_audio_edge.runtime.decoder import silence_llama_logs

    check_decoder_type(qtype)
    if source_type not in FLOAT_TYPES and not allow_requantize:
        raise FaEdgeError(
            f"the decoder is already quantized ({source_type}); requantizing loses quality: quantize from an "
            "f16/f32 bundle, or pass --allow-requantize"
        )
    silence_llama_logs(lc)
    params = lc.llama_model_quantize_default_params()
    params.ftype = getattr(lc, DECODER_QUANTS[qtype])
    params.nthread = threads
    params.allow_requantize = allow_requantize
    if f16_embeddings and qtype != "f16":
        params.token_embedding_type = GGML_TYPE_F16
        params.output_tensor_type = GGML_TYPE_F16
    rc = lc.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0 or not dst.is_file():
        raise FaEdgeError(f"llama.cpp could not quantize {src} to {qtype} (code {rc})")

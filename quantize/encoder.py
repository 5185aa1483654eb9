"""Encoder conversion with onnxruntime's tools: int8 dynamic quantization, fp16 weights, or fp32 as is."""

from __future__ import annotations

from pathlib import Path

from falcon_audio_edge.export.onnx_encoder import copy_onnx, save_onnx

from falcon_audio_edge.errors import FaEdgeError

ENCODER_TYPES = ("fp32", "fp16", "int8")


def check_encoder_type(name: str) -> None:
    if name not in ENCODER_TYPES:
        raise FaEdgeError(f"unknown encoder type {name!r}; valid: {', '.join(ENCODER_TYPES)}")


def convert_encoder(src: Path, dst: Path, etype: str, source_type: str, allow_requantize: bool) -> None:
    """Write ``dst`` as ``etype`` from ``src`` (an fp32 encoder unless ``allow_requantize``)."""
    check_encoder_type(etype)
    if etype == source_type:
        copy_onnx(src, dst)
        return
    if source_type != "fp32" and not allow_requantize:
        raise FaEdgeError(f"the encoder is already {source_type}; convert from an fp32 bundle or --allow-requantize")
    if etype == "int8":
        _int8(src, dst)
    elif etype == "fp16":
        _fp16(src, dst)
    else:
        raise FaEdgeError(f"cannot turn a {source_type} encoder back into fp32")
    _copy_metadata(src, dst)


def _int8(src: Path, dst: Path) -> None:
    """Dynamic int8: MatMul weights quantized ahead of time, activations at run time (the Whisper
    encoder's cost is in its MatMuls; the two small convolutions stay fp32). Weights use 7 bits
    (``reduce_range``): on an x86 CPU without VNNI (AVX2 alone, as many laptops) onnxruntime's u8 x s8 kernels add
    pairs of products in 16 bits, which full-range weights overflow. A bundle is quantized on one machine and run on
    others, so every int8 encoder is made to be safe there (tests/test_encoder_export.py: on an AMD EPYC with AVX2,
    the tiny test encoder's int8 output had cosine 0.77 to fp32 with full-range weights, above 0.99 with 7 bits)."""
    import logging
    import shutil

    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # it advises pre-processing on the root logger for every model
    # onnxruntime writes a shape-inferred copy beside the model it reads: it reads a copy in the output's folder,
    # so the input bundle is never written (it may be read-only, or read by other runs at the same time)
    stage = dst.parent / ".int8-source"
    stage.mkdir(exist_ok=True)
    try:
        copy_onnx(src, stage / src.name)
        quantize_dynamic(stage / src.name, dst, op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8,
                         per_channel=True, reduce_range=True)  # fmt: skip
    finally:
        root.setLevel(level)
        shutil.rmtree(stage, ignore_errors=True)


def _fp16(src: Path, dst: Path) -> None:
    """fp16 weights and compute, fp32 input and output (the graph's interface is unchanged)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    save_onnx(model, dst)


def _copy_metadata(src: Path, dst: Path) -> None:
    """Keep the dims in the converted graph's metadata."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
    model = onnx.load(str(dst))
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    save_onnx(model, dst)

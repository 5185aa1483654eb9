"""Import a pretrained Whisper encoder: from an HF folder or a CTranslate2 folder (faster-whisper's format).

CTranslate2's ``model.bin`` is read directly (no ctranslate2 needed). Its variable names map to
transformers' ``WhisperEncoder`` names through the tables below; every ``encoder/`` variable must map (or be
a checked scalar) and every encoder weight must be filled, or the import fails naming the tensor.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from falcon_audio_edge.config import EncoderDims
from falcon_audio_edge.errors import CheckpointError

# CTranslate2 dtype codes (ctranslate2/types.h)
CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
CT2_GLOBAL = {
    "encoder/conv1/weight": "conv1.weight",
    "encoder/conv1/bias": "conv1.bias",
    "encoder/conv2/weight": "conv2.weight",
    "encoder/conv2/bias": "conv2.bias",
    "encoder/position_encodings/encodings": "embed_positions.weight",
    "encoder/layer_norm/gamma": "layer_norm.weight",
    "encoder/layer_norm/beta": "layer_norm.bias",
}
CT2_LAYER = {
    "self_attention/layer_norm/gamma": "self_attn_layer_norm.weight",
    "self_attention/layer_norm/beta": "self_attn_layer_norm.bias",
    "self_attention/linear_1/weight": "self_attn.out_proj.weight",
    "self_attention/linear_1/bias": "self_attn.out_proj.bias",
    "ffn/layer_norm/gamma": "final_layer_norm.weight",
    "ffn/layer_norm/beta": "final_layer_norm.bias",
    "ffn/linear_0/weight": "fc1.weight",
    "ffn/linear_0/bias": "fc1.bias",
    "ffn/linear_1/weight": "fc2.weight",
    "ffn/linear_1/bias": "fc2.bias",
}
# the fused q/k/v projection, split in this order (Whisper's k projection has no bias)
CT2_QKV = ("self_attention/linear_0/weight", "self_attention/linear_0/bias")
CT2_SCALARS = {"encoder/num_heads"}
LAYER_RE = re.compile(r"encoder/layer_(\d+)/(.+)")


def _read(f: BinaryIO, fmt: str) -> Any:
    return struct.unpack("<" + fmt, f.read(struct.calcsize("<" + fmt)))[0]


def _read_name(f: BinaryIO) -> str:
    return f.read(_read(f, "H"))[:-1].decode("utf-8")


def read_ct2_variables(path: Path, prefix: str = "encoder/") -> dict[str, np.ndarray]:
    """The variables of a CTranslate2 model.bin whose names start with ``prefix``."""
    out = {}
    with open(path, "rb") as f:
        version = _read(f, "I")
        if version < 5:
            raise CheckpointError(f"{path}: CTranslate2 model version {version} is too old (need >= 5)")
        _read_name(f)  # spec name
        _read(f, "I")  # spec revision
        for _ in range(_read(f, "I")):
            name = _read_name(f)
            shape = [_read(f, "I") for _ in range(_read(f, "B"))]
            dtype, nbytes = _read(f, "B"), _read(f, "I")
            if not name.startswith(prefix):
                f.seek(nbytes, 1)
                continue
            if dtype not in CT2_DTYPES:
                raise CheckpointError(f"{path}: variable {name} has unsupported dtype code {dtype}")
            out[name] = np.frombuffer(f.read(nbytes), dtype=CT2_DTYPES[dtype]).reshape(shape)
    return out


def ct2_to_hf(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Map CTranslate2 encoder variables to transformers WhisperEncoder state-dict names."""
    out = {}
    for name, value in variables.items():
        if name in CT2_SCALARS:
            continue
        if name in CT2_GLOBAL:
            out[CT2_GLOBAL[name]] = value
            continue
        match = LAYER_RE.fullmatch(name)
        if not match:
            raise CheckpointError(f"CTranslate2 variable {name!r} has no mapping")
        i, rest = match.groups()
        if rest in CT2_LAYER:
            out[f"layers.{i}.{CT2_LAYER[rest]}"] = value
        elif rest in CT2_QKV:
            kind = rest.rsplit("/", 1)[1]
            q, k, v = np.split(value, 3, axis=0)  # (3*D, ...) -> 3 x (D, ...)
            out[f"layers.{i}.self_attn.q_proj.{kind}"] = q
            out[f"layers.{i}.self_attn.v_proj.{kind}"] = v
            if kind == "weight":
                out[f"layers.{i}.self_attn.k_proj.weight"] = k
            elif np.abs(k.astype(np.float32)).max() > 0:
                raise CheckpointError(f"layer {i}: Whisper's key projection has no bias, but {name} holds one")
        else:
            raise CheckpointError(f"CTranslate2 variable {name!r} has no mapping")
    return out


def ct2_encoder_dims(variables: dict[str, np.ndarray]) -> EncoderDims:
    conv1 = variables["encoder/conv1/weight"]  # (D, n_mels, 3)
    layers = {int(m.group(1)) for n in variables if (m := LAYER_RE.fullmatch(n))}
    return EncoderDims(
        n_mels=conv1.shape[1],
        d_model=conv1.shape[0],
        n_layers=len(layers),
        n_heads=int(variables["encoder/num_heads"]),
        ffn_dim=variables["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        n_positions=variables["encoder/position_encodings/encodings"].shape[0],
    )


def load_whisper_encoder(path: str | Path) -> tuple[EncoderDims, dict[str, Any]]:
    """Encoder dims and transformers-named float32 torch tensors, from a CTranslate2 or an HF folder."""
    import torch

    path = Path(path)
    if (path / "model.bin").is_file():
        variables = read_ct2_variables(path / "model.bin")
        dims = ct2_encoder_dims(variables)
        state = {k: torch.from_numpy(v.astype(np.float32)) for k, v in ct2_to_hf(variables).items()}
        return dims, state
    if (path / "config.json").is_file():
        return _load_hf_whisper(path)
    raise CheckpointError(f"{path} is neither a CTranslate2 Whisper folder (model.bin) nor an HF one (config.json)")


def _load_hf_whisper(path: Path) -> tuple[EncoderDims, dict[str, Any]]:
    from transformers import WhisperModel

    config = json.loads((path / "config.json").read_text())
    if config.get("model_type") != "whisper":
        raise CheckpointError(f"{path}/config.json is not a Whisper model (model_type={config.get('model_type')!r})")
    from falcon_audio_edge.model import encoder_dims

    encoder = WhisperModel.from_pretrained(str(path), dtype="float32").get_encoder()
    return encoder_dims(encoder.config), {k: v.float() for k, v in encoder.state_dict().items()}

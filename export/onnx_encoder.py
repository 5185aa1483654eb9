"""Export the audio side (Whisper encoder + frame stacking + connector) to one ONNX graph.

Input ``mel`` (1, n_mels, frames), any length up to 3000 frames; output
``audio_embeds`` (1, tokens, hidden) already in the decoder's width. The dims
JSON is stored in the model's metadata (``fa_edge_dims``).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from falcon_audio_edge.audio import FRAMES_PER_SECOND

ONNX_OPSET = 17
INPUT_NAME = "mel"
OUTPUT_NAME = "audio_embeds"
DIMS_KEY = "fa_edge_dims"


def export_encoder(model, path: Path) -> Path:
    """Trace the encoder with a dynamic frame axis and write it, with the dims in its metadata."""
    import onnx
    import torch

    from falcon_audio_edge.model import AudioEncoderForExport

    wrapper = AudioEncoderForExport(model).eval()
    example = torch.zeros(1, model.dims.encoder.n_mels, 7 * FRAMES_PER_SECOND + 1)  # odd length: pad path traced
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {2: "frames"}, OUTPUT_NAME: {1: "tokens"}},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = DIMS_KEY, model.dims.to_json()
    onnx.save(proto, str(path))
    return path


def reference_embeddings(model, mel: np.ndarray) -> np.ndarray:
    """PyTorch audio embeddings for one mel window: (n_mels, T) -> (tokens, hidden)."""
    import torch

    with torch.no_grad():
        return model.encode_audio(torch.from_numpy(mel)[None]).numpy()[0]

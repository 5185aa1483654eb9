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
# protobuf files stop at 2 GiB: bigger graphs (Whisper large-v3's encoder in fp32) keep their weights in one
# side file, ``encoder.onnx.data``, which onnxruntime reads from beside the graph
EXTERNAL_DATA_BYTES = 1_800_000_000


def data_file(path: Path) -> Path:
    return path.with_name(path.name + ".data")


def initializer_bytes(proto) -> int:
    import onnx

    return sum(
        int(np.prod(t.dims)) * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
        for t in proto.graph.initializer
    )


def save_onnx(proto, path: Path, threshold: int = EXTERNAL_DATA_BYTES) -> None:
    """Write ``proto``; weights go to ``path.name + '.data'`` when they pass ``threshold`` bytes."""
    import onnx

    data = data_file(path)
    data.unlink(missing_ok=True)
    if initializer_bytes(proto) > threshold:
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)  # fmt: skip
    else:
        onnx.save_model(proto, str(path))


def copy_onnx(src: Path, dst: Path) -> None:
    """Copy a graph with its side file, if it has one."""
    import shutil

    shutil.copyfile(src, dst)
    if data_file(src).is_file():
        shutil.copyfile(data_file(src), data_file(dst))


def export_encoder(model, path: Path, threshold: int = EXTERNAL_DATA_BYTES) -> Path:
    """Trace the encoder with a dynamic frame axis and write it, with the dims in its metadata.

    The exporter writes into a private folder first (for large models it scatters one file per weight);
    the graph is then saved as ``path`` (plus ``path.data`` past ``threshold`` bytes of weights).
    """
    import tempfile

    import onnx
    import torch

    from falcon_audio_edge.model import AudioEncoderForExport

    wrapper = AudioEncoderForExport(model).eval()
    example = torch.zeros(1, model.dims.encoder.n_mels, 7 * FRAMES_PER_SECOND + 1)  # odd length: pad path traced
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".onnx-export-") as tmp:
        traced = Path(tmp) / path.name
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                (example,),
                str(traced),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {2: "frames"}, OUTPUT_NAME: {1: "tokens"}},
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
        proto = onnx.load(str(traced))
        del proto.metadata_props[:]
        entry = proto.metadata_props.add()
        entry.key, entry.value = DIMS_KEY, model.dims.to_json()
        save_onnx(proto, path, threshold)
    return path


def reference_embeddings(model, mel: np.ndarray) -> np.ndarray:
    """PyTorch audio embeddings for one mel window: (n_mels, T) -> (tokens, hidden)."""
    import torch

    with torch.no_grad():
        return model.encode_audio(torch.from_numpy(mel)[None]).numpy()[0]

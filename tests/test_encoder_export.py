"""The ONNX encoder (Whisper + stacking + connector) against PyTorch, and our Whisper forward against transformers."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from falcon_audio_edge.export.onnx_encoder import DIMS_KEY, reference_embeddings

from falcon_audio_edge.audio import N_FRAMES, load_audio, log_mel_spectrogram
from falcon_audio_edge.config import ModelDims
from falcon_audio_edge.model import stack_frames, whisper_encode
from falcon_audio_edge.runtime.encoder import OnnxEncoder


def test_variable_length_forward_equals_transformers_at_30s(checkpoint):
    encoder = checkpoint.model.encoder
    mel = torch.randn(1, checkpoint.dims.encoder.n_mels, N_FRAMES)
    with torch.no_grad():
        ours = whisper_encode(encoder, mel)
        theirs = encoder(mel).last_hidden_state
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_stack_frames_pads_the_tail():
    x = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    y = stack_frames(x, 2)
    assert y.shape == (2, 3, 6)
    assert torch.equal(y[:, 0, 3:], x[:, 1])
    assert torch.equal(y[:, 2, 3:], torch.zeros(2, 3))


@pytest.mark.parametrize("clip", ["1s", "7s", "30s"])
def test_onnx_matches_pytorch(bundle_f32, checkpoint, clips, clip):
    mel = log_mel_spectrogram(load_audio(clips[clip]).samples, checkpoint.dims.encoder.n_mels)
    got = OnnxEncoder(bundle_f32 / "encoder.onnx", n_threads=2)(mel)
    want = reference_embeddings(checkpoint.model, mel)
    assert got.shape == want.shape == (checkpoint.dims.n_audio_tokens(mel.shape[1]), checkpoint.dims.decoder.hidden)
    assert np.abs(got - want).max() <= 1e-4


def test_onnx_metadata_holds_the_dims(bundle_f32, checkpoint):
    meta = {p.key: p.value for p in onnx.load(str(bundle_f32 / "encoder.onnx")).metadata_props}
    assert ModelDims.from_json(meta[DIMS_KEY]) == checkpoint.dims


def test_encoder_cost_follows_clip_length(bundle_f32, checkpoint, clips):
    """Variable length by default: a 1 s clip gives 25 audio tokens, not 750."""
    enc = OnnxEncoder(bundle_f32 / "encoder.onnx", n_threads=2)
    mel = log_mel_spectrogram(load_audio(clips["1s"]).samples, checkpoint.dims.encoder.n_mels)
    assert enc(mel).shape[0] == 25


def test_large_encoders_keep_their_weights_in_one_side_file(checkpoint, clips, tmp_path):
    """Past the threshold (2 GiB protobuf limit in real use; 0 here) weights go to encoder.onnx.data, and the
    graph still runs, converts to int8 and copies with it."""
    from falcon_audio_edge.export.onnx_encoder import copy_onnx, data_file, export_encoder
    from falcon_audio_edge.quantize.encoder import convert_encoder

    big = export_encoder(checkpoint.model, tmp_path / "encoder.onnx", threshold=0)
    assert data_file(big).stat().st_size > big.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder.onnx", "encoder.onnx.data"]  # no stray files
    mel = log_mel_spectrogram(load_audio(clips["1s"]).samples, checkpoint.dims.encoder.n_mels)
    want = reference_embeddings(checkpoint.model, mel)
    assert np.abs(OnnxEncoder(big, n_threads=2)(mel) - want).max() <= 1e-4
    (tmp_path / "copy").mkdir()
    copy_onnx(big, tmp_path / "copy" / "encoder.onnx")
    assert np.abs(OnnxEncoder(tmp_path / "copy" / "encoder.onnx", n_threads=2)(mel) - want).max() <= 1e-4
    (tmp_path / "int8").mkdir()
    convert_encoder(big, tmp_path / "int8" / "encoder.onnx", "int8", "fp32", False)
    got = OnnxEncoder(tmp_path / "int8" / "encoder.onnx", n_threads=2)(mel)
    cos = (got * want).sum() / np.linalg.norm(got) / np.linalg.norm(want)
    assert cos > 0.99
    assert onnx.load(str(tmp_path / "int8" / "encoder.onnx")).metadata_props[0].key == DIMS_KEY

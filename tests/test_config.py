"""ModelDims: presets, round trips, and errors that name the bad value."""

from __future__ import annotations

import pytest

from falcon_audio_edge.config import ModelDims, preset_dims
from falcon_audio_edge.errors import ConfigError


def test_falcon3_preset_has_falcon3_1b_decoder_dims():
    d = preset_dims("falcon3-audio-1b").decoder
    assert (d.hidden, d.n_layers, d.n_heads, d.n_kv_heads, d.head_dim, d.ffn_dim) == (2048, 18, 8, 4, 256, 8192)
    assert (d.vocab_size, d.rope_theta, d.rms_eps, d.tie_embeddings) == (131072, 1000042.0, 1e-6, False)
    assert preset_dims("falcon3-audio-1b").tokenizer_pre == "falcon3"


@pytest.mark.parametrize("encoder, width, mels", [("whisper-small", 768, 80), ("whisper-large-v3", 1280, 128)])
def test_encoder_presets(encoder, width, mels):
    dims = preset_dims("falcon3-audio-1b", encoder=encoder)
    assert (dims.encoder.d_model, dims.encoder.n_mels) == (width, mels)


def test_round_trip_through_json():
    dims = preset_dims("tiny", pool_factor=4, connector="linear", pad_to_30s=True)
    assert ModelDims.from_json(dims.to_json()) == dims


def test_audio_token_count_follows_length():
    dims = preset_dims("tiny")  # pool 2: 100 mel frames/s -> 50 encoder frames/s -> 25 tokens/s
    assert dims.n_audio_tokens(100) == 25
    assert dims.n_audio_tokens(3000) == 750
    assert dims.n_audio_tokens(101) == 26


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"bogus": 1}, r"unknown keys \['bogus'\]"),
        ({"decoder": {"hidden": 0}}, "decoder.hidden must be a positive number, got 0"),
        ({"decoder": {"n_heads": 6, "n_kv_heads": 4}}, "n_heads=6 is not a multiple of decoder.n_kv_heads=4"),
        ({"audio": {"connector": "conv"}}, "audio.connector must be one of"),
        ({"encoder": {"colour": "red"}}, r"dims.encoder has unknown keys \['colour'\]"),
        ({"version": 99}, "dims.version 99 is not supported"),
    ],
)
def test_bad_dims_are_rejected_naming_the_value(patch, message):
    data = preset_dims("tiny").to_dict()
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    with pytest.raises(ConfigError, match=message):
        ModelDims.from_dict(data)


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ConfigError, match="unknown preset 'huge'; known"):
        preset_dims("huge")

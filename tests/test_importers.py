"""Importing pretrained parts: Whisper encoders (CTranslate2, HF) and Llama LLMs (HF folder, GGUF)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from falcon_audio_edge.audio import load_audio, log_mel_spectrogram
from falcon_audio_edge.checkpoint import builtin_corpus, copy_state
from falcon_audio_edge.config import ENCODER_PRESETS
from falcon_audio_edge.demo import whisper_dir
from falcon_audio_edge.errors import CheckpointError, ConfigError
from falcon_audio_edge.model import whisper_config, whisper_encode
from falcon_audio_edge.whisper_import import ct2_to_hf, load_whisper_encoder, read_ct2_variables


def test_ct2_whisper_tiny_en_matches_ctranslate2(clips):
    ctranslate2 = pytest.importorskip("ctranslate2", reason="ctranslate2 comes with the eval extra")
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    dims, state = load_whisper_encoder(whisper_dir())
    assert (dims.d_model, dims.n_layers, dims.n_heads, dims.n_mels) == (384, 4, 6, 80)
    encoder = WhisperEncoder(whisper_config(dims)).eval()
    copy_state(encoder, state, "whisper tiny.en")
    mel = log_mel_spectrogram(load_audio(clips["q0"]).samples, 80, pad_to_30s=True)
    with torch.no_grad():
        ours = whisper_encode(encoder, torch.from_numpy(mel)[None]).numpy()
    model = ctranslate2.models.Whisper(str(whisper_dir()), device="cpu", compute_type="float32")
    theirs = np.array(model.encode(ctranslate2.StorageView.from_array(mel[None]), to_cpu=True))
    assert np.abs(ours - theirs).max() < 1e-3


def test_unmapped_ct2_variable_is_an_error():
    variables = read_ct2_variables(whisper_dir() / "model.bin")
    variables["encoder/layer_0/self_attention/rotary/weight"] = np.zeros(3)
    with pytest.raises(CheckpointError, match="has no mapping"):
        ct2_to_hf(variables)


def test_hf_whisper_folder(tmp_path):
    from transformers import WhisperModel

    torch.manual_seed(0)
    WhisperModel(whisper_config(ENCODER_PRESETS["whisper-test"])).save_pretrained(tmp_path)
    dims, state = load_whisper_encoder(tmp_path)
    assert dims == ENCODER_PRESETS["whisper-test"]
    saved = WhisperModel.from_pretrained(tmp_path).get_encoder().state_dict()
    assert all(torch.equal(saved[k], state[k]) for k in saved)


def test_not_a_whisper_folder(tmp_path):
    with pytest.raises(CheckpointError, match="neither a CTranslate2 Whisper folder"):
        load_whisper_encoder(tmp_path)


def test_hf_llm_folder(tmp_path):
    from transformers import LlamaForCausalLM

    from falcon_audio_edge.config import preset_dims
    from falcon_audio_edge.importers import load_llm
    from falcon_audio_edge.model import llama_config
    from falcon_audio_edge.tokenizer import train_bpe

    tokenizer = train_bpe(builtin_corpus(), 300, "falcon3", "falcon3")
    dims = preset_dims("tiny").with_vocab(len(tokenizer)).decoder
    LlamaForCausalLM(llama_config(dims)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    imported = load_llm(tmp_path)
    assert imported.dims == dims
    assert imported.chat_format == "falcon3"
    assert imported.tokenizer_pre == "llama-bpe"  # the folder's name does not say Falcon3


def test_non_llama_llm_is_refused(tmp_path):
    from transformers import GPT2Config

    from falcon_audio_edge.importers import decoder_dims

    with pytest.raises(ConfigError, match="only Llama-architecture"):
        decoder_dims(GPT2Config())


def test_a_checkpoint_saved_again_is_the_same_file(tiny_ckpt, tmp_path):
    """safetensors writes its header's metadata in a random order; the saved file must not show it (a run's base
    is fingerprinted by the weights file's sha256). Tied embeddings put a second metadata entry in."""
    from dataclasses import replace

    from falcon_audio_edge.checkpoint import WEIGHTS_NAME, load_checkpoint, save_checkpoint
    from falcon_audio_edge.model import AudioLanguageModel
    from falcon_audio_edge.runtime.bundle import sha256_file

    ckpt = load_checkpoint(tiny_ckpt)
    dims = replace(ckpt.dims, decoder=replace(ckpt.dims.decoder, tie_embeddings=True))
    model = AudioLanguageModel(dims)
    shas = {sha256_file(save_checkpoint(model, ckpt.tokenizer, tmp_path / f"c{i}") / WEIGHTS_NAME) for i in range(6)}
    assert len(shas) == 1
    with open(tmp_path / "c0" / WEIGHTS_NAME, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    assert len(header["__metadata__"]) >= 2  # the dims and the tied embedding's alias: an order to get wrong
    assert list(header) == sorted(header) and list(header["__metadata__"]) == sorted(header["__metadata__"])
    again = load_checkpoint(tmp_path / "c0").model.state_dict()
    assert all(torch.equal(v, again[k]) for k, v in model.state_dict().items())

"""The PyTorch model: Whisper encoder -> frame stacking -> connector -> Llama causal LM.

Imports torch and transformers; the runtime never imports this module.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from falcon_audio_edge.config import DecoderDims, EncoderDims, ModelDims

# EncoderDims field -> transformers WhisperConfig field
WHISPER_CONFIG_NAMES = {
    "n_mels": "num_mel_bins",
    "d_model": "d_model",
    "n_layers": "encoder_layers",
    "n_heads": "encoder_attention_heads",
    "ffn_dim": "encoder_ffn_dim",
    "n_positions": "max_source_positions",
}


def encoder_dims(config: WhisperConfig) -> EncoderDims:
    return EncoderDims(**{ours: getattr(config, theirs) for ours, theirs in WHISPER_CONFIG_NAMES.items()})


def whisper_config(enc: EncoderDims) -> WhisperConfig:
    config = WhisperConfig(
        **{theirs: getattr(enc, ours) for ours, theirs in WHISPER_CONFIG_NAMES.items()},
        decoder_layers=1,
        decoder_attention_heads=enc.n_heads,
        decoder_ffn_dim=enc.ffn_dim,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
    )
    config._attn_implementation = "sdpa"
    return config


def llama_config(dec: DecoderDims) -> LlamaConfig:
    config = LlamaConfig(
        vocab_size=dec.vocab_size,
        hidden_size=dec.hidden,
        intermediate_size=dec.ffn_dim,
        num_hidden_layers=dec.n_layers,
        num_attention_heads=dec.n_heads,
        num_key_value_heads=dec.n_kv_heads,
        head_dim=dec.head_dim,
        max_position_embeddings=dec.max_positions,
        rms_norm_eps=dec.rms_eps,
        rope_parameters={"rope_type": "default", "rope_theta": dec.rope_theta},
        tie_word_embeddings=dec.tie_embeddings,
        attention_bias=False,
        mlp_bias=False,
    )
    config._attn_implementation = "sdpa"
    return config


def whisper_encode(encoder: WhisperEncoder, mel: torch.Tensor) -> torch.Tensor:
    """Whisper encoder on a mel of any length up to 30 s: (B, n_mels, T) -> (B, ceil(T/2), D).

    transformers' WhisperEncoder.forward insists on exactly 3000 frames; this runs
    the same modules on the frames given, with the first positions' embeddings.
    """
    x = nn.functional.gelu(encoder.conv1(mel))
    x = nn.functional.gelu(encoder.conv2(x))
    x = x.permute(0, 2, 1)  # (B, D, T') -> (B, T', D)
    x = x + encoder.embed_positions.weight[: x.shape[1]]
    for layer in encoder.layers:
        out = layer(x, None)
        x = out[0] if isinstance(out, tuple) else out
    return encoder.layer_norm(x)


def stack_frames(x: torch.Tensor, k: int) -> torch.Tensor:
    """Stack k consecutive frames, zero-padding the tail: (B, T, D) -> (B, ceil(T/k), D*k)."""
    if k == 1:
        return x
    b, _, d = x.shape
    pad = x.new_zeros(b, k - 1, d)
    n = (x.shape[1] + k - 1) // k
    x = torch.cat([x, pad], dim=1)[:, : n * k]  # (B, T, D) -> (B, n*k, D)
    return x.reshape(b, n, d * k)  # (B, n*k, D) -> (B, n, D*k)


class RMSNorm(nn.Module):
    """x / rms(x) * weight, written out (exports to any ONNX opset)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Connector(nn.Module):
    """Projects stacked encoder frames into the decoder's embedding space.

    Normalised on both sides: Whisper's outputs have a few very large channels, and an unnormalised
    projection drifts towards one large constant vector (a soft prompt that ignores the audio). The output
    RMSNorm starts at the scale of the LLM's token embeddings (``match_embedding_scale``).
    """

    def __init__(self, dims: ModelDims):
        super().__init__()
        d_in = dims.encoder.d_model * dims.audio.pool_factor
        d_out = dims.decoder.hidden
        if dims.audio.connector == "linear":
            self.proj = nn.Sequential(nn.LayerNorm(d_in), nn.Linear(d_in, d_out))
        else:
            self.proj = nn.Sequential(nn.LayerNorm(d_in), nn.Linear(d_in, d_out), nn.GELU(), nn.Linear(d_out, d_out))
        self.norm = RMSNorm(d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))

    @torch.no_grad()
    def match_embedding_scale(self, embeddings: torch.Tensor) -> None:
        """Start the output at the RMS of the decoder's token embeddings."""
        self.norm.weight.fill_(float(embeddings.float().pow(2).mean().sqrt()))


class CTCHead(nn.Module):
    """Audio embeddings -> log-probabilities over blank + the LLM's vocabulary, (T, H) -> (T, 1 + V).

    A token's score is the audio embedding's dot product with that token's input embedding row, times a
    learned scale; a linear gives the blank. In training its CTC loss pulls each spoken token's audio
    positions towards the embedding the LLM already reads as that token; at run time it steers
    transcription (``runtime/ctc.py`` computes the same in numpy from the bundle's ``ctc_head.npz``).
    """

    def __init__(self, hidden: int):
        super().__init__()
        self.blank = nn.Linear(hidden, 1)
        self.log_scale = nn.Parameter(torch.zeros(()))

    @torch.no_grad()
    def match_embedding_scale(self, embeddings: torch.Tensor) -> None:
        """Start the scale so that an audio embedding equal to a token's row scores about 8."""
        rms2 = float(embeddings.float().pow(2).mean())
        self.log_scale.fill_(math.log(8.0 / (rms2 * embeddings.shape[1])))

    def forward(self, audio: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        tokens = audio @ embeddings.T * self.log_scale.exp()  # (T, H) @ (H, V) -> (T, V)
        return torch.cat([self.blank(audio), tokens], dim=-1).float().log_softmax(-1)  # (T, 1 + V)


class AudioLanguageModel(nn.Module):
    """Whisper encoder + frame stacking + connector + Llama-architecture causal LM."""

    def __init__(self, dims: ModelDims):
        super().__init__()
        self.dims = dims
        self.encoder = WhisperEncoder(whisper_config(dims.encoder))
        self.connector = Connector(dims)
        self.llm = LlamaForCausalLM(llama_config(dims.decoder))
        self.ctc = CTCHead(dims.decoder.hidden) if dims.audio.ctc_head else None

    def add_ctc_head(self) -> CTCHead:
        """Give a model without one a fresh CTC head (the dims then say so: it is saved with the model)."""
        if self.ctc is None:
            self.dims = replace(self.dims, audio=replace(self.dims.audio, ctc_head=True))
            self.ctc = CTCHead(self.dims.decoder.hidden).to(self.connector.norm.weight.device)
            self.ctc.match_embedding_scale(self.llm.get_input_embeddings().weight)
        return self.ctc

    def ctc_log_probs(self, audio: torch.Tensor) -> torch.Tensor:
        """The CTC head's reading of audio embeddings: (T, H) -> (T, 1 + V), blank first."""
        if self.ctc is None:
            raise ValueError("this model has no CTC head (dims.audio.ctc_head is false)")
        return self.ctc(audio, self.llm.get_input_embeddings().weight)

    def encode_audio(self, mel: torch.Tensor) -> torch.Tensor:
        """Audio embeddings in the decoder's width: (B, n_mels, T) -> (B, ceil(T/2/k), H)."""
        return self.project_frames(whisper_encode(self.encoder, mel))

    def project_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Encoder frames to audio embeddings: (B, T, D) -> (B, ceil(T/k), H)."""
        return self.connector(stack_frames(frames, self.dims.audio.pool_factor))

    def encode_windows(self, mels, tokens) -> torch.Tensor:
        """Audio embeddings of a clip's encoder windows (each (n_mels, T_i), keeping ``tokens[i]``), each window
        heard on its own as at run time: -> (sum(tokens), H)."""
        parts = [
            self.encode_audio(torch.as_tensor(mel)[None])[0, :keep] for mel, keep in zip(mels, tokens, strict=True)
        ]
        return torch.cat(parts)  # (T_i, H) each -> (sum T_i, H)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.llm.get_input_embeddings()(ids)


class AudioEncoderForExport(nn.Module):
    """The exported graph: log-mel (1, n_mels, T) -> audio embeddings (1, ceil(T/2/k), H)."""

    def __init__(self, model: AudioLanguageModel):
        super().__init__()
        self.model = model

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.model.encode_audio(mel)

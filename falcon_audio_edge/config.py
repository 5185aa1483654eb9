"""Model dimensions and the prompt/audio layout: one small dataclass, saved with every artifact.

``ModelDims`` is written into the checkpoint (``fa_edge_config.json``), the ONNX
metadata, the GGUF keys and the bundle manifest, and every artifact is rebuilt
from it (as whisper's ``ModelDimensions``). ``from_dict`` rejects unknown keys
and bad values, naming them.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from falcon_audio_edge.audio import CHUNK_LENGTH, N_FRAMES
from falcon_audio_edge.errors import ConfigError

DIMS_VERSION = 1


def _positive(owner: str, **values: int | float) -> None:
    for name, value in values.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{owner}.{name} must be a positive number, got {value!r}")


@dataclass(frozen=True)
class EncoderDims:
    """Whisper encoder sizes (transformers' WhisperConfig names in brackets)."""

    n_mels: int = 80  # num_mel_bins
    d_model: int = 384
    n_layers: int = 4  # encoder_layers
    n_heads: int = 6  # encoder_attention_heads
    ffn_dim: int = 1536  # encoder_ffn_dim
    n_positions: int = 1500  # max_source_positions: 30 s after the stride-2 conv

    def validate(self) -> None:
        _positive("encoder", **{f.name: getattr(self, f.name) for f in fields(self)})
        if self.d_model % self.n_heads:
            raise ConfigError(f"encoder.d_model={self.d_model} is not divisible by encoder.n_heads={self.n_heads}")
        if self.n_positions * 2 != N_FRAMES:
            raise ConfigError(f"encoder.n_positions must be {N_FRAMES // 2} (30 s of audio), got {self.n_positions}")


@dataclass(frozen=True)
class DecoderDims:
    """Llama-architecture causal LM sizes (Falcon3 is LlamaForCausalLM)."""

    hidden: int = 2048
    n_layers: int = 18
    n_heads: int = 8
    n_kv_heads: int = 4
    head_dim: int = 256
    ffn_dim: int = 8192
    vocab_size: int = 131072
    rope_theta: float = 1000042.0
    rms_eps: float = 1e-6
    tie_embeddings: bool = False
    max_positions: int = 8192

    def validate(self) -> None:
        numbers = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "tie_embeddings"}
        _positive("decoder", **numbers)
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"decoder.n_heads={self.n_heads} is not a multiple of decoder.n_kv_heads={self.n_kv_heads}"
            )
        if self.head_dim % 2:
            raise ConfigError(f"decoder.head_dim={self.head_dim} must be even for rotary embeddings")


CONNECTORS = ("linear", "mlp")
WINDOW_MS = CHUNK_LENGTH * 1000  # Whisper's own window: the whole of a clip up to 30 s heard at once
MIN_WINDOW_MS = 500


@dataclass(frozen=True)
class AudioLayout:
    """How encoder frames become decoder tokens."""

    pool_factor: int = 2  # stack k encoder frames: Whisper's 50 Hz -> 25 Hz at k=2
    connector: str = "mlp"  # "linear" or "mlp" (Linear, GELU, Linear)
    pad_to_30s: bool = False  # encode a zero-padded 30 s window, then keep the clip's frames
    ctc_head: bool = False  # a CTC head over the decoder's vocabulary reads the audio embeddings (model.CTCHead)
    # the encoder hears the audio in windows this long, each on its own, in training and at run time alike: under
    # 30 s, a window's audio tokens go into the decoder as soon as the window is over, while the person speaks on
    window_ms: int = WINDOW_MS

    def validate(self) -> None:
        _positive("audio", pool_factor=self.pool_factor)
        if self.connector not in CONNECTORS:
            raise ConfigError(f"audio.connector must be one of {CONNECTORS}, got {self.connector!r}")
        for name in ("pad_to_30s", "ctc_head"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"audio.{name} must be true or false, got {getattr(self, name)!r}")
        w = self.window_ms
        if isinstance(w, bool) or not isinstance(w, int) or not MIN_WINDOW_MS <= w <= WINDOW_MS or w % 20:
            raise ConfigError(f"audio.window_ms must be a whole number of 20 ms encoder frames from {MIN_WINDOW_MS} "
                              f"to {WINDOW_MS}, got {w!r}")  # fmt: skip
        if self.pad_to_30s and w != WINDOW_MS:
            raise ConfigError(f"audio.pad_to_30s pads 30 s windows; it does not go with audio.window_ms={w}")


CHAT_FORMATS: dict[str, dict[str, str]] = {
    "chatml": {
        "system_start": "<|im_start|>system\n",
        "user_start": "<|im_start|>user\n",
        "assistant_start": "<|im_start|>assistant\n",
        "turn_end": "<|im_end|>\n",
        "assistant_end": "<|im_end|>\n",
        "end_of_turn": "<|im_end|>",
    },
    "falcon3": {
        "system_start": "<|system|>\n",
        "user_start": "<|user|>\n",
        "assistant_start": "<|assistant|>\n",
        "turn_end": "\n",
        "assistant_end": "<|endoftext|>\n",
        "end_of_turn": "<|endoftext|>",
    },
}


@dataclass(frozen=True)
class PromptLayout:
    """The chat prompt around the audio: user turn = audio embeddings, then "\\n" + prompt.

    The template's pieces are tokenized with special tokens parsed, the prompt as plain text; the audio embeddings
    are spliced in between them, so no placeholder token reaches the decoder.
    """

    chat_format: str = "chatml"
    system_start: str = CHAT_FORMATS["chatml"]["system_start"]
    user_start: str = CHAT_FORMATS["chatml"]["user_start"]
    assistant_start: str = CHAT_FORMATS["chatml"]["assistant_start"]
    turn_end: str = CHAT_FORMATS["chatml"]["turn_end"]
    assistant_end: str = CHAT_FORMATS["chatml"]["assistant_end"]
    end_of_turn: str = CHAT_FORMATS["chatml"]["end_of_turn"]
    system_prompt: str = ""
    add_bos: bool = False

    @classmethod
    def for_format(cls, chat_format: str, **overrides: Any) -> PromptLayout:
        if chat_format not in CHAT_FORMATS:
            raise ConfigError(f"unknown chat format {chat_format!r}; known: {sorted(CHAT_FORMATS)}")
        return cls(chat_format=chat_format, **CHAT_FORMATS[chat_format], **overrides)

    def validate(self) -> None:
        if not self.end_of_turn or not self.assistant_end.startswith(self.end_of_turn):
            raise ConfigError(
                f"prompt.assistant_end={self.assistant_end!r} must start with prompt.end_of_turn={self.end_of_turn!r}"
            )
        if not self.user_start or not self.assistant_start:
            raise ConfigError("prompt.user_start and prompt.assistant_start must not be empty")

    def around_audio(self, prompt: str | None, first_turn: bool = True) -> tuple[str, str]:
        """The text before and after the audio embeddings in one user turn."""
        before = ""
        if first_turn and self.system_prompt:
            before += self.system_start + self.system_prompt + self.turn_end
        before += self.user_start
        after = (f"\n{prompt}" if prompt else "") + self.turn_end + self.assistant_start
        return before, after

    def text_turn(self, prompt: str, first_turn: bool = True) -> str:
        """A user turn with text only (no audio), ending in the assistant's start."""
        before, _ = self.around_audio(None, first_turn)
        return before + prompt + self.turn_end + self.assistant_start


@dataclass(frozen=True)
class ModelDims:
    """Everything needed to rebuild the model and its prompts; saved with every artifact."""

    name: str
    encoder: EncoderDims = field(default_factory=EncoderDims)
    decoder: DecoderDims = field(default_factory=DecoderDims)
    audio: AudioLayout = field(default_factory=AudioLayout)
    prompt: PromptLayout = field(default_factory=PromptLayout)
    tokenizer_pre: str = "gpt-2"  # llama.cpp pre-tokenizer name written to the GGUF
    version: int = DIMS_VERSION

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("dims.name must not be empty")
        if self.version != DIMS_VERSION:
            raise ConfigError(f"dims.version {self.version} is not supported (this toolkit reads {DIMS_VERSION})")
        for part in (self.encoder, self.decoder, self.audio, self.prompt):
            part.validate()

    # -- audio-token arithmetic shared by the PyTorch model and the runtime --
    def encoder_frames(self, mel_frames: int) -> int:
        """Encoder output frames for a mel of ``mel_frames`` (two convs, the second stride 2)."""
        return (mel_frames + 1) // 2

    def n_audio_tokens(self, mel_frames: int) -> int:
        """Decoder tokens for one window of ``mel_frames`` mel frames (pad_to_30s or not)."""
        k = self.audio.pool_factor
        return math.ceil(self.encoder_frames(mel_frames) / k)

    # -- serialisation --
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelDims:
        if not isinstance(data, dict):
            raise ConfigError(f"dims must be a JSON object, got {type(data).__name__}")
        parts = {"encoder": EncoderDims, "decoder": DecoderDims, "audio": AudioLayout, "prompt": PromptLayout}
        _reject_unknown("dims", data, {f.name for f in fields(cls)})
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key in parts:
                if not isinstance(value, dict):
                    raise ConfigError(f"dims.{key} must be an object, got {value!r}")
                _reject_unknown(f"dims.{key}", value, {f.name for f in fields(parts[key])})
                kwargs[key] = parts[key](**value)
            else:
                kwargs[key] = value
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str) -> ModelDims:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"dims are not valid JSON: {exc}") from exc

    def with_vocab(self, vocab_size: int) -> ModelDims:
        return replace(self, decoder=replace(self.decoder, vocab_size=vocab_size))


def _reject_unknown(owner: str, data: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{owner} has unknown keys {unknown}; known: {sorted(known)}")


ENCODER_PRESETS: dict[str, EncoderDims] = {
    "whisper-test": EncoderDims(n_mels=80, d_model=32, n_layers=2, n_heads=2, ffn_dim=64),
    "whisper-tiny": EncoderDims(n_mels=80, d_model=384, n_layers=4, n_heads=6, ffn_dim=1536),
    "whisper-base": EncoderDims(n_mels=80, d_model=512, n_layers=6, n_heads=8, ffn_dim=2048),
    "whisper-small": EncoderDims(n_mels=80, d_model=768, n_layers=12, n_heads=12, ffn_dim=3072),
    "whisper-large-v3": EncoderDims(n_mels=128, d_model=1280, n_layers=32, n_heads=20, ffn_dim=5120),
}

DECODER_PRESETS: dict[str, DecoderDims] = {
    # hidden 32, 2 layers: the size tests build; vocab is set from the tokenizer at init
    "test": DecoderDims(
        hidden=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, ffn_dim=64,
        vocab_size=512, rope_theta=10000.0, rms_eps=1e-5, tie_embeddings=False, max_positions=2048,
    ),
    # Falcon3-1B-Instruct's exact decoder dims (LlamaForCausalLM)
    "falcon3-1b": DecoderDims(
        hidden=2048, n_layers=18, n_heads=8, n_kv_heads=4, head_dim=256, ffn_dim=8192,
        vocab_size=131072, rope_theta=1000042.0, rms_eps=1e-6, tie_embeddings=False, max_positions=8192,
    ),
}  # fmt: skip


@dataclass(frozen=True)
class Preset:
    encoder: str
    decoder: str
    chat_format: str
    tokenizer_pre: str
    system_prompt: str = ""


PRESETS: dict[str, Preset] = {
    "tiny": Preset(encoder="whisper-test", decoder="test", chat_format="chatml", tokenizer_pre="gpt-2"),
    "falcon3-audio-1b": Preset(
        encoder="whisper-small", decoder="falcon3-1b", chat_format="falcon3", tokenizer_pre="falcon3"
    ),
}


def preset_dims(name: str, encoder: str | None = None, **audio: Any) -> ModelDims:
    """ModelDims of a named preset, optionally with another encoder preset or audio layout."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    preset = PRESETS[name]
    encoder = encoder or preset.encoder
    if encoder not in ENCODER_PRESETS:
        raise ConfigError(f"unknown encoder preset {encoder!r}; known: {sorted(ENCODER_PRESETS)}")
    return ModelDims(
        name=name,
        encoder=ENCODER_PRESETS[encoder],
        decoder=DECODER_PRESETS[preset.decoder],
        audio=AudioLayout(**audio),
        prompt=PromptLayout.for_format(preset.chat_format, system_prompt=preset.system_prompt),
        tokenizer_pre=preset.tokenizer_pre,
    )

"""The training recipe's settings: one dataclass, loaded from YAML, validated in one place.

Unknown keys and conflicting settings are rejected, naming them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from falcon_audio_edge.train.augment import SpecAugment

from falcon_audio_edge.errors import ConfigError
from falcon_audio_edge.lora import LoraSettings

TRAINABLE = ("connector", "lora", "encoder")
OPTIMIZERS = ("adamw", "adamw8bit")


def check_rate(name: str, value: Any) -> None:
    """A learning rate is a number in (0, 1); YAML reads ``1e-3`` (no dot) as text, so say how to write it."""
    if not isinstance(value, float) or not 0 < value < 1:
        hint = " (YAML reads 1e-3 as text: write 0.001 or 1.0e-3)" if isinstance(value, str) else ""
        raise ConfigError(f"{name} must be a number in (0, 1), got {value!r}{hint}")


@dataclass
class TrainConfig:
    checkpoint: str  # the starting checkpoint (fa-edge init ...)
    train_manifest: str | list[str]  # one manifest, or a list read as one set (e.g. a set and its respoken copy)
    output_dir: str
    eval_manifest: str | None = None
    train: list[str] = field(default_factory=lambda: ["connector"])  # any of TRAINABLE; connector always
    lora_r: int = 8
    lora_alpha: int = 16
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    load_in_4bit: bool = False  # QLoRA: the LLM's decoder layers in NF4 under the adapters (bitsandbytes)
    optimizer: str = "adamw"  # or adamw8bit (bitsandbytes)
    learning_rate: float = 1e-3
    encoder_learning_rate: float | None = None  # with 'encoder' in train: its own peak rate (None: learning_rate)
    weight_decay: float = 0.0
    warmup_steps: int = 30
    max_steps: int = 300
    stop_after: int | None = None  # end the run after this step; the schedule still spans max_steps
    batch_size: int = 8
    grad_accum: int = 1
    bf16: bool | str = "auto"  # bf16 autocast: true, false, or auto (where the device has bf16 arithmetic)
    eval_every: int = 100
    save_every: int = 100
    max_eval_examples: int = 64
    seed: int = 0
    log_every: int = 10
    ctc_weight: float = 0.0  # > 0: add the CTC loss of the spoken transcript on the audio embeddings
    ctc_only_steps: int = 0  # the first updates train on the CTC loss alone (no LLM forward: fast)
    ctc_learning_rate: float | None = None  # the CTC head's own peak rate (None: learning_rate)
    ship_ctc_head: bool = True  # false: the CTC head is a training aid, left out of trainable.safetensors (and
    # its dims), so the shipped model transcribes with the LLM alone
    char_weight: float = 0.0  # > 0: add the character CTC loss (the checkpoint's char_head.npz, or a fresh head)
    char_learning_rate: float | None = None  # the character head's own peak rate (None: learning_rate)
    init_from: str | None = None  # an earlier run's output_dir (same checkpoint): start from its trained weights
    freq_masks: int = 0  # SpecAugment (train/augment.py): mel bands masked per training clip
    freq_mask_width: int = 15  # each band 0 to this many mel bins
    time_masks: int = 0  # time spans masked per training clip
    time_mask_width: int = 10  # each span 0 to this many mel frames (10 ms)

    def __post_init__(self) -> None:
        for name in ("lora_r", "lora_alpha", "max_steps", "batch_size", "grad_accum", "eval_every", "save_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        check_rate("learning_rate", self.learning_rate)
        if not (isinstance(self.bf16, bool) or self.bf16 == "auto"):  # auto: train/precision.py
            raise ConfigError(f"bf16 must be true, false or auto, got {self.bf16!r}")
        for name in ("freq_masks", "freq_mask_width", "time_masks", "time_mask_width"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
        if self.encoder_learning_rate is not None:
            if "encoder" not in self.train:
                raise ConfigError(f"encoder_learning_rate={self.encoder_learning_rate!r} needs 'encoder' in train")
            check_rate("encoder_learning_rate", self.encoder_learning_rate)
        if self.warmup_steps < 0 or self.warmup_steps >= self.max_steps:
            raise ConfigError(f"warmup_steps={self.warmup_steps} must be >= 0 and < max_steps={self.max_steps}")
        stop, last = self.stop_after, self.max_steps
        if stop is not None and (isinstance(stop, bool) or not isinstance(stop, int) or not 1 <= stop <= last):
            raise ConfigError(f"stop_after={stop!r} must be an integer from 1 to max_steps={last}")
        if not isinstance(self.ctc_weight, (int, float)) or self.ctc_weight < 0:
            raise ConfigError(f"ctc_weight must be a number >= 0, got {self.ctc_weight!r}")
        if not isinstance(self.ctc_only_steps, int) or not 0 <= self.ctc_only_steps <= self.max_steps:
            raise ConfigError(
                f"ctc_only_steps={self.ctc_only_steps!r} must be an integer from 0 to max_steps={self.max_steps}"
            )
        if self.ctc_learning_rate is not None:
            if not self.ctc_weight:
                raise ConfigError(f"ctc_learning_rate={self.ctc_learning_rate!r} needs ctc_weight > 0 (no CTC head)")
            check_rate("ctc_learning_rate", self.ctc_learning_rate)
        if not isinstance(self.char_weight, (int, float)) or isinstance(self.char_weight, bool) or self.char_weight < 0:
            raise ConfigError(f"char_weight must be a number >= 0, got {self.char_weight!r}")
        if self.char_learning_rate is not None:
            if not self.char_weight:
                raise ConfigError(f"char_learning_rate={self.char_learning_rate!r} needs char_weight > 0 (no head)")
            check_rate("char_learning_rate", self.char_learning_rate)
        if self.ctc_only_steps and not (self.ctc_weight or self.char_weight):
            raise ConfigError(
                f"ctc_only_steps={self.ctc_only_steps} needs ctc_weight or char_weight > 0 (there is no loss otherwise)"
            )
        for name in ("checkpoint", "output_dir", "eval_manifest", "init_from"):
            value = getattr(self, name)
            optional = value is None and name in ("eval_manifest", "init_from")
            if not (isinstance(value, str) and value) and not optional:
                raise ConfigError(f"{name} must be a path, got {value!r}")
        manifests = self.train_manifests
        if not manifests or not all(isinstance(m, str) and m for m in manifests):
            raise ConfigError(f"train_manifest must be a path or a list of paths, got {self.train_manifest!r}")
        if self.init_from is not None and Path(self.init_from).resolve() == Path(self.output_dir).resolve():
            raise ConfigError(f"init_from={self.init_from!r} is the output_dir itself (a resume): drop it")
        if not isinstance(self.lora_targets, list) or not all(isinstance(t, str) and t for t in self.lora_targets):
            raise ConfigError(f"lora_targets must be a list of layer names, got {self.lora_targets!r}")
        unknown = sorted(set(self.train) - set(TRAINABLE))
        if unknown:
            raise ConfigError(f"train has unknown parts {unknown}; choose from {list(TRAINABLE)}")
        if "connector" not in self.train:
            raise ConfigError("train must include 'connector' (a fresh connector is never left untrained)")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {list(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.load_in_4bit and "lora" not in self.train:
            raise ConfigError("load_in_4bit (QLoRA) needs 'lora' in train: a 4-bit base LLM cannot train itself")

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: Path | None = None) -> TrainConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"the config must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"config has unknown keys {unknown}; known: {sorted(known)}")
        missing = sorted(k for k in ("checkpoint", "train_manifest", "output_dir") if k not in data)
        if missing:
            raise ConfigError(f"config is missing {missing}")
        data = dict(data)
        if base is not None:  # paths in a config file are relative to the file
            for key in ("checkpoint", "output_dir", "eval_manifest", "init_from"):
                if key in data:
                    data[key] = _relative_to(base, data[key])
            manifests = data["train_manifest"]
            if isinstance(manifests, list):
                data["train_manifest"] = [_relative_to(base, m) for m in manifests]
            else:
                data["train_manifest"] = _relative_to(base, manifests)
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        import yaml

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
        return cls.from_dict(data or {}, base=path.parent)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def spec_augment(self) -> SpecAugment:
        return SpecAugment(self.freq_masks, self.freq_mask_width, self.time_masks, self.time_mask_width)

    @property
    def last_step(self) -> int:
        """The step the run ends after: stop_after, or max_steps."""
        return self.max_steps if self.stop_after is None else self.stop_after

    @property
    def train_manifests(self) -> list[str]:
        return self.train_manifest if isinstance(self.train_manifest, list) else [self.train_manifest]

    @property
    def lora_settings(self) -> LoraSettings:
        """The adapters' shape, as saved with the trained weights and used to merge them."""
        return LoraSettings(self.lora_r, self.lora_alpha, tuple(self.lora_targets))


def _relative_to(base: Path, value: Any) -> Any:
    """A path written in a config file is relative to the file; anything else is left for validation."""
    if isinstance(value, str) and value and not Path(value).is_absolute():
        return str((base / value).resolve())
    return value

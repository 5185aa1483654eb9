"""Checkpoints: HF-style folders (dims JSON + safetensors + tokenizer files), checked key by key."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from falcon_audio_edge.config import ModelDims, preset_dims
from falcon_audio_edge.errors import CheckpointError, ConfigError, ExportError

CONFIG_NAME = "fa_edge_config.json"
WEIGHTS_NAME = "model.safetensors"
CHECKPOINT_FORMAT = "falcon-audio-edge-checkpoint"


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (eval mode, f32), its tokenizer and its dims."""

    model: Any  # AudioLanguageModel
    tokenizer: Any
    dims: ModelDims
    path: Path


def is_checkpoint(path: str | Path) -> bool:
    return (Path(path) / CONFIG_NAME).is_file()


def read_dims(path: str | Path) -> ModelDims:
    config = Path(path) / CONFIG_NAME
    if not config.is_file():
        raise CheckpointError(f"{path} is not a checkpoint: {CONFIG_NAME} is missing")
    try:
        data = json.loads(config.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{config} is not valid JSON: {exc}") from exc
    if data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{config} is not a {CHECKPOINT_FORMAT} config (format={data.get('format')!r})")
    return ModelDims.from_dict(data["dims"])


def save_checkpoint(model: Any, tokenizer: Any, out_dir: str | Path, force: bool = False) -> Path:
    """Write the checkpoint folder atomically: a temporary sibling, renamed into place."""
    from safetensors.torch import save_model

    out = Path(out_dir)
    with staged_dir(out, force) as tmp:
        save_model(model, str(tmp / WEIGHTS_NAME), metadata={"fa_edge_dims": model.dims.to_json()})
        tokenizer.save_pretrained(str(tmp))
        config = {"format": CHECKPOINT_FORMAT, "dims": model.dims.to_dict()}
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return out


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Rebuild the model from the saved dims and load every weight, checking keys and shapes."""
    from falcon_audio_edge.model import AudioLanguageModel
    from falcon_audio_edge.tokenizer import load_tokenizer

    path = Path(path)
    dims = read_dims(path)
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{path}: {WEIGHTS_NAME} is missing")
    model = AudioLanguageModel(dims)
    load_weights(model, weights)
    model.eval()
    return Checkpoint(model=model, tokenizer=load_tokenizer(path), dims=dims, path=path)


def load_weights(model: Any, weights: Path) -> None:
    """Copy a safetensors file into ``model``: every key present, no extra key, every shape equal."""
    from safetensors import safe_open

    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    try:
        with safe_open(str(weights), framework="pt") as f:
            found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise CheckpointError(f"cannot read {weights}: {exc}") from exc
    tied = _tied_keys(model)
    missing = sorted(k for k in expected if k not in found and k not in tied)
    unexpected = sorted(k for k in found if k not in expected)
    wrong = sorted(f"{k}: {found[k]} != {expected[k]}" for k in found if k in expected and found[k] != expected[k])
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{weights} does not match the dims: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"wrong shapes {wrong[:5]}"
        )
    model.load_state_dict(tensors, strict=False)


def _tied_keys(model: Any) -> set[str]:
    """Keys that share storage with another key (tied embeddings), saved once."""
    seen: dict[int, str] = {}
    tied = set()
    for key, tensor in model.state_dict().items():
        ptr = tensor.data_ptr()
        if ptr in seen:
            tied.add(key)
        else:
            seen[ptr] = key
    return tied


class staged_dir:
    """Write a folder under a temporary sibling name, move it into place only on success.

    The destination must be absent or an empty folder, unless ``force``. On any
    error the temporary folder is removed and the destination is left as it was.
    """

    def __init__(self, out: Path, force: bool):
        self.out = Path(out)
        self.force = force
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        if self.out.exists() and not self.out.is_dir():
            raise ExportError(f"output {self.out} exists and is not a folder")
        if self.out.is_dir() and any(self.out.iterdir()) and not self.force:
            raise ExportError(f"output folder {self.out} is not empty; pass --force to replace it")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.tmp-", dir=self.out.parent))
        return self.tmp

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        assert self.tmp is not None
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = None
        if self.out.exists():
            old = self.out.with_name(f".{self.out.name}.old-{self.tmp.name.rsplit('-', 1)[-1]}")
            self.out.rename(old)
        self.tmp.rename(self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def builtin_corpus() -> list[str]:
    text = resources.files("falcon_audio_edge").joinpath("data/tokenizer_corpus.txt").read_text()
    return [line for line in text.splitlines() if line.strip()]


def init_checkpoint(
    preset: str,
    out_dir: str | Path,
    encoder: str | None = None,
    seed: int = 0,
    force: bool = False,
    **audio: Any,
) -> Path:
    """A random-weight checkpoint of a named preset, with a small BPE tokenizer trained here."""
    import torch

    from falcon_audio_edge.model import AudioLanguageModel
    from falcon_audio_edge.tokenizer import train_bpe

    dims = preset_dims(preset, encoder=encoder, **audio)
    vocab_target = min(dims.decoder.vocab_size, 512)
    tokenizer = train_bpe(builtin_corpus(), vocab_target, dims.prompt.chat_format, dims.tokenizer_pre)
    if preset == "tiny":  # the test-sized decoder takes exactly the tokenizer's vocab
        dims = dims.with_vocab(len(tokenizer))
    if len(tokenizer) > dims.decoder.vocab_size:
        raise ConfigError(f"tokenizer has {len(tokenizer)} tokens, more than vocab_size {dims.decoder.vocab_size}")
    torch.manual_seed(seed)
    model = AudioLanguageModel(dims).eval()
    return save_checkpoint(model, tokenizer, out_dir, force=force)

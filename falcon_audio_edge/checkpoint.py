"""Checkpoints: HF-style folders (dims JSON + safetensors + tokenizer files), checked key by key."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

from falcon_audio_edge.config import ModelDims, PromptLayout, preset_dims
from falcon_audio_edge.errors import CheckpointError, ConfigError
from falcon_audio_edge.files import read_json, staged_dir

CONFIG_NAME = "fa_edge_config.json"
WEIGHTS_NAME = "model.safetensors"
ADAPTER_NAME = "adapter.safetensors"  # the LoRA adapters merged into WEIGHTS_NAME, kept for a bundle's adapter.gguf
CHECKPOINT_FORMAT = "falcon-audio-edge-checkpoint"


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (eval mode, f32), its tokenizer and its dims."""

    model: Any  # AudioLanguageModel
    tokenizer: Any
    dims: ModelDims
    path: Path

    @property
    def adapter_path(self) -> Path | None:
        """The LoRA adapters its LLM's weights hold merged (None: the weights are all there is)."""
        return self.path / ADAPTER_NAME if (self.path / ADAPTER_NAME).is_file() else None


def is_checkpoint(path: str | Path) -> bool:
    return (Path(path) / CONFIG_NAME).is_file()


def read_dims(path: str | Path) -> ModelDims:
    config = Path(path) / CONFIG_NAME
    data = read_json(config, CheckpointError, "checkpoint")
    if data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{config} is not a {CHECKPOINT_FORMAT} config (format={data.get('format')!r})")
    return ModelDims.from_dict(data["dims"])


def save_checkpoint(
    model: Any, tokenizer: Any, out_dir: str | Path, force: bool = False, inputs: tuple = (), adapter: Any = None
) -> Path:
    """Write the checkpoint folder atomically: a temporary sibling, renamed into place. ``inputs``: what it was
    built from, which the output folder must not hold. ``adapter``: (peft-named LoRA tensors, LoraSettings) that
    the model's LLM holds merged, saved beside it (``fa-edge export`` makes a bundle's adapter.gguf of them)."""
    from safetensors.torch import save_file, save_model

    out = Path(out_dir)
    with staged_dir(out, force, inputs=inputs, replaceable=is_checkpoint) as tmp:
        save_model(model, str(tmp / WEIGHTS_NAME), metadata={"fa_edge_dims": model.dims.to_json()})
        sort_header(tmp / WEIGHTS_NAME)
        if adapter is not None:
            tensors, settings = adapter
            halves = {k: v.detach().half().cpu().contiguous() for k, v in tensors.items()}
            save_file(halves, str(tmp / ADAPTER_NAME), metadata=settings.to_metadata())
            sort_header(tmp / ADAPTER_NAME)
        tokenizer.save_pretrained(str(tmp))
        config = {"format": CHECKPOINT_FORMAT, "dims": model.dims.to_dict()}
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return out


def sort_header(path: Path) -> None:
    """Rewrite a safetensors file's header with its keys sorted, in place: safetensors writes the metadata in a
    random order (a hash map), so the same weights would give a file with another sha256 on every save, and a run's
    base checkpoint (train/state.py fingerprints it) could not be built again, here or on another machine."""
    with open(path, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > size:  # the same keys and values: never longer than safetensors' own compact JSON
            raise CheckpointError(f"{path}: sorted header is {len(text)} bytes, over the {size} written")
        f.seek(8)
        f.write(text.ljust(size))  # padded with spaces, as safetensors pads it


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

    try:
        with safe_open(str(weights), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise CheckpointError(f"cannot read {weights}: {exc}") from exc
    copy_state(model, tensors, str(weights))


def copy_state(module: Any, tensors: dict[str, Any], source: str) -> None:
    """Load ``tensors`` into ``module`` after checking every key and shape.

    Keys that share storage (tied embeddings) form a group: one of its keys is enough.
    """
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    tensors = dict(tensors)
    missing = []
    for group in shared_groups(module):
        present = [k for k in group if k in tensors]
        if not present:
            missing.append(group[0])
        for key in group:
            tensors.setdefault(key, tensors[present[0]] if present else None)
    unexpected = sorted(k for k in found if k not in expected)
    wrong = sorted(f"{k}: {found[k]} != {expected[k]}" for k in found if k in expected and found[k] != expected[k])
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{source} does not match the dims: missing {sorted(missing)[:5]}, unexpected {unexpected[:5]}, "
            f"wrong shapes {wrong[:5]}"
        )
    module.load_state_dict(tensors, strict=True)


def shared_groups(module: Any) -> list[list[str]]:
    """State-dict keys grouped by the storage they share (a tied embedding is one group of two)."""
    groups: dict[int, list[str]] = {}
    for key, tensor in module.state_dict().items():
        groups.setdefault(tensor.data_ptr(), []).append(key)
    return list(groups.values())


def builtin_corpus() -> list[str]:
    text = resources.files("falcon_audio_edge").joinpath("data/tokenizer_corpus.txt").read_text()
    return [line for line in text.splitlines() if line.strip()]


def init_checkpoint(
    preset: str,
    out_dir: str | Path,
    encoder: str | Path | None = None,
    llm: str | Path | None = None,
    seed: int = 0,
    force: bool = False,
    name: str | None = None,
    **audio: Any,
) -> Path:
    """Build a model (``build_model``) and save it as a checkpoint folder."""
    inputs = tuple(Path(p) for p in (encoder, llm) if p is not None and Path(p).exists())
    staged_dir(Path(out_dir), force, inputs=inputs, replaceable=is_checkpoint).check()  # before the build
    model, tokenizer = build_model(preset, encoder, llm, seed, name, **audio)
    return save_checkpoint(model, tokenizer, out_dir, force=force, inputs=inputs)


def build_model(
    preset: str,
    encoder: str | Path | None = None,
    llm: str | Path | None = None,
    seed: int = 0,
    name: str | None = None,
    **audio: Any,
) -> tuple[Any, Any]:
    """A model of a named preset: random weights and a small BPE tokenizer trained here. ``encoder`` is an
    encoder preset name or a pretrained Whisper folder (HF or CTranslate2); ``llm`` a pretrained LLM (HF folder
    or .gguf). Pretrained parts are copied in (every key and shape checked); the connector is always fresh."""
    import torch

    from falcon_audio_edge.model import AudioLanguageModel

    encoder_state = None
    if encoder is not None and Path(encoder).exists():
        from falcon_audio_edge.whisper_import import load_whisper_encoder

        encoder_dims, encoder_state = load_whisper_encoder(encoder)
        dims = replace(preset_dims(preset, **audio), encoder=encoder_dims)
    else:
        dims = preset_dims(preset, encoder=encoder, **audio)
    imported = None
    if llm is not None:
        from falcon_audio_edge.importers import load_llm

        imported = load_llm(llm)
        prompt = PromptLayout.for_format(imported.chat_format, system_prompt=dims.prompt.system_prompt)
        dims = replace(dims, decoder=imported.dims, prompt=prompt, tokenizer_pre=imported.tokenizer_pre)
        tokenizer = imported.tokenizer
    else:
        tokenizer, dims = _random_preset_tokenizer(preset, dims)
    if name:
        dims = replace(dims, name=name)
    torch.manual_seed(seed)
    model = AudioLanguageModel(dims).eval()
    if imported is not None:
        copy_state(model.llm, imported.model.state_dict(), str(llm))
    if encoder_state is not None:
        copy_state(model.encoder, encoder_state, str(encoder))
    model.connector.match_embedding_scale(model.llm.get_input_embeddings().weight)
    if model.ctc is not None:
        model.ctc.match_embedding_scale(model.llm.get_input_embeddings().weight)
    return model, tokenizer


def _random_preset_tokenizer(preset: str, dims: ModelDims) -> tuple[Any, ModelDims]:
    from falcon_audio_edge.tokenizer import train_bpe

    tokenizer = train_bpe(builtin_corpus(), min(dims.decoder.vocab_size, 512), dims.prompt.chat_format,
                          dims.tokenizer_pre)  # fmt: skip
    if preset == "tiny":  # the test-sized decoder takes exactly the tokenizer's vocab
        dims = dims.with_vocab(len(tokenizer))
    if len(tokenizer) > dims.decoder.vocab_size:
        raise ConfigError(f"tokenizer has {len(tokenizer)} tokens, more than vocab_size {dims.decoder.vocab_size}")
    return tokenizer, dims

"""Checkpoint and resume of a training run: the trainable weights, optimizer, scheduler and step.

Written atomically (temporary file, then rename), so an interrupted run resumes from its last save.
"""

from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path

import torch

from falcon_audio_edge.checkpoint import WEIGHTS_NAME
from falcon_audio_edge.errors import ConfigError
from falcon_audio_edge.files import atomic_file
from falcon_audio_edge.runtime.bundle import sha256_file

STATE_FILE = "state.pt"
BUCKET = 32  # batches per length bucket in the trainer's batch order
# how the trainer orders batches: a resume must replay the same stream, so a change of scheme is refused
BATCHING = f"shuffle, sort by length within buckets of {BUCKET} batches, shuffle batches"
# settings that must not change between a run and its resume
RESUME_KEYS = (
    "checkpoint", "train", "lora_r", "lora_alpha", "lora_targets", "batch_size", "grad_accum", "seed", "ctc_weight",
    "ctc_only_steps", "init_from", "ctc_learning_rate", "char_weight", "char_learning_rate", "optimizer",
    "load_in_4bit",
)  # fmt: skip
# resume keys newer than some saves: their value then
ADDED_KEYS = {"char_weight": 0.0, "char_learning_rate": None, "optimizer": "adamw", "load_in_4bit": False}


def read_state(path: Path) -> dict:
    """A saved training state (a GPU run's too), unpickled with ``weights_only``: tensors, numbers, strings, lists
    and dicts only, so a crafted file cannot run code; anything else is refused with the file named."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{path} is not a training state this toolkit can read safely ({first[:200]})") from None


def base_fingerprint(checkpoint: str | Path) -> str:
    """sha256 of the base checkpoint's weights: a resume or ``init_from`` goes on only from the same weights
    (the same path holding a re-made checkpoint is refused; the same weights under another path are not)."""
    return sha256_file(Path(checkpoint) / WEIGHTS_NAME)


def same_base(saved: dict, cfg, base: str) -> bool:
    if "base_sha256" in saved:
        return saved["base_sha256"] == base
    return Path(saved["checkpoint"]).resolve() == Path(cfg.checkpoint).resolve()  # saved before fingerprints


def saved_trainable(state: dict) -> dict[str, torch.Tensor]:
    """A state's trainable weights under today's names: runs saved before the CTC head moved into the model
    kept it beside the model ("ctc.*"); it is "model.ctc.*" now."""
    return {(f"model.{k}" if k.startswith("ctc.") else k): v for k, v in state["trainable"].items()}


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().float().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_state(out: Path, step: int, model, optimizer, scheduler, cfg, base: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    state = {
        "step": step,
        "trainable": trainable_state(model),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "config": {
            **{k: getattr(cfg, k) for k in RESUME_KEYS},
            "batching": BATCHING,
            "base_sha256": base,
            "train_manifests": cfg.train_manifests,
        },
    }
    path = out / STATE_FILE
    return atomic_file(path, lambda tmp: torch.save(state, tmp))


def load_state(out: Path, model, optimizer, scheduler, cfg, base: str) -> int:
    """Restore the last save in ``out`` (if any) after checking it was made with these settings and base weights;
    returns the step to continue from. The file is read once."""
    path = out / STATE_FILE
    if not path.is_file():
        return 0
    state = read_state(path)
    check_resume(out, state["config"], cfg, base)
    want, saved = trainable_state(model), saved_trainable(state)
    if set(saved) != set(want):
        raise ConfigError(f"{path} was saved with other trainable parts; use a new output_dir or the same config")
    model.load_state_dict(saved, strict=False)
    if optimizer is not None and state["optimizer"] is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    return int(state["step"])


def init_weights(run: Path, model, cfg, base: str) -> list[str]:
    """Start from an earlier run's trained weights (``init_from``); returns the trainable keys left fresh.

    Every saved weight must be trainable here with the same shape; the optimizer and the step start anew.
    """
    path = Path(run) / STATE_FILE
    if not path.is_file():
        raise ConfigError(f"init_from: {path} not found (give an earlier run's output_dir)")
    state = read_state(path)
    if not same_base(state["config"], cfg, base):
        raise ConfigError(
            f"init_from: {run} trained from other base weights ({state['config']['checkpoint']}), not {cfg.checkpoint}"
        )
    want, saved = trainable_state(model), saved_trainable(state)
    unknown = sorted(k for k in saved if k not in want)
    wrong = sorted(f"{k}: {tuple(saved[k].shape)} != {tuple(want[k].shape)}" for k in saved
                   if k in want and saved[k].shape != want[k].shape)  # fmt: skip
    if unknown or wrong:
        raise ConfigError(f"init_from: {path} does not fit this config: not trainable here {unknown[:5]}, {wrong[:5]}")
    model.load_state_dict(saved, strict=False)
    return sorted(k for k in want if k not in saved)


def check_resume(out: Path, saved: dict, cfg, base: str) -> None:
    """``saved``: the config part of ``out``'s state; every setting a resume must keep, and the base weights."""
    changed = sorted(k for k in RESUME_KEYS if k != "checkpoint" and saved.get(k, ADDED_KEYS.get(k)) != getattr(cfg, k))
    if "train_manifests" in saved and saved["train_manifests"] != cfg.train_manifests:  # saved since manifest lists
        changed.append("train_manifest (the batch order a resume replays)")
    if not same_base(saved, cfg, base):
        changed.insert(0, "checkpoint (its weights)")
    if saved.get("batching") != BATCHING:
        changed.append(f"batching (saved: {saved.get('batching') or 'before length buckets'})")
    if changed:
        raise ConfigError(f"{out} holds a run with other {changed}; resume with the same settings or a new output_dir")


def save_trainable(model, path: Path, cfg) -> Path:
    """The trained weights alone (connector, LoRA, encoder as configured): small enough to ship."""
    from safetensors.torch import save_file

    state = trainable_state(model)
    dims = model.dims
    if not cfg.ship_ctc_head:  # a training aid only: neither its weights nor its place in the dims ship
        state = {k: v for k, v in state.items() if not k.startswith("ctc.")}
        dims = replace(dims, audio=replace(dims.audio, ctc_head=False))
    if "encoder" in cfg.train:  # the whole encoder: its buffers too, not only its parameters
        state |= {f"encoder.{k}": v for k, v in model.encoder.state_dict().items()}
    # every floating-point tensor in float16: half the size, and the demo build casts back to the model's dtype
    tensors = {k: (v.half() if v.is_floating_point() else v).detach().cpu().contiguous() for k, v in state.items()}
    meta = {"train": ",".join(cfg.train), "dims": dims.to_json()}
    if "lora" in cfg.train:
        meta |= cfg.lora_settings.to_metadata()
    return atomic_file(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))

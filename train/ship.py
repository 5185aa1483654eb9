"""Stack a run trained on top of the demo model onto the weights that model was built from: a new file to ship.

    python -m falcon_audio_edge.train.ship RUN_DIR --onto SHIPPED.safetensors -o NEW.safetensors

A run whose ``checkpoint`` is a demo checkpoint (built by ``fa-edge demo`` from SHIPPED: the LoRA adapters
merged, the encoder and connector as shipped) trains on from the shipped model. Its trained parts
(connector, encoder, CTC head) replace SHIPPED's; SHIPPED's LoRA adapters stay (the run's LLM is the merged
one). A run that trained LoRA adapters of its own on that merged LLM adds them: both sets are stacked along the
rank into one (``lora.stack_adapters``: the sum of the two deltas, exactly). The link is checked, not assumed:
the run's base weights must still be that checkpoint's (by sha256) and the checkpoint must have been built from
SHIPPED (its ``sources.json``). Every tensor's key and shape is checked against SHIPPED; the new file is written
whole or not at all.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch
from falcon_audio_edge.train.state import STATE_FILE, read_state, saved_trainable

from falcon_audio_edge.checkpoint import WEIGHTS_NAME, read_dims
from falcon_audio_edge.config import ModelDims
from falcon_audio_edge.errors import ConfigError, FaEdgeError
from falcon_audio_edge.files import atomic_file
from falcon_audio_edge.lora import LORA_KEY, LoraSettings, stack_adapters
from falcon_audio_edge.runtime.bundle import sha256_file

PARTS = ("connector.", "encoder.", "ctc.")  # what a run on top of the demo model may replace
SOURCES = "sources.json"  # the demo folder's record of what its checkpoint was built from


def run_base(run: Path, onto: Path) -> tuple[dict, Path]:
    """The run's saved state, and its base checkpoint after checking that it was built from ``onto``."""
    path = run / STATE_FILE
    if not path.is_file():
        raise ConfigError(f"{path} not found: give a training run's output_dir")
    state = read_state(path)
    base = Path(state["config"]["checkpoint"])
    weights = base / WEIGHTS_NAME
    if not weights.is_file() or sha256_file(weights) != state["config"].get("base_sha256"):
        raise ConfigError(f"{run} trained from {base}, which is gone or holds other weights now")
    sources = base.parent / SOURCES
    try:
        built = json.loads(sources.read_text()).get("shipped_sha256")
    except (OSError, ValueError, AttributeError):
        built = None
    if built != sha256_file(onto):
        raise ConfigError(f"{run}'s base checkpoint {base} was not built from {onto} (see {sources})")
    return state, base


def run_adapters(state: dict, trained: dict[str, torch.Tensor]) -> tuple[dict, LoraSettings | None]:
    """The run's own LoRA adapters (taken out of ``trained``) and their settings, or ({}, None)."""
    adapters = {k: trained.pop(k) for k in [k for k in trained if LORA_KEY.match(k)]}
    if not adapters:
        return {}, None
    cfg = state["config"]
    return adapters, LoraSettings(cfg["lora_r"], cfg["lora_alpha"], tuple(cfg["lora_targets"]))


def stacked_lora(below: dict, meta: dict, adapters: dict, settings: LoraSettings) -> tuple[dict, LoraSettings]:
    """SHIPPED's adapters (``below``, their settings in ``meta``) and the run's as one set."""
    try:
        below_settings = LoraSettings.from_metadata(meta, "the shipped weights") if below else None
        return stack_adapters(below, below_settings, adapters, settings, "the run")
    except FaEdgeError as exc:
        raise ConfigError(str(exc)) from exc


def stacked(
    state: dict, shipped: dict[str, torch.Tensor], dims: ModelDims, meta: dict[str, str] | None = None
) -> tuple[dict[str, torch.Tensor], LoraSettings | None]:
    """SHIPPED's tensors with the run's trained parts in place of theirs, every key and shape checked, and the
    LoRA settings of the result where the run trained adapters (``meta``: SHIPPED's metadata, which holds its
    adapters' settings)."""
    trained = {k.removeprefix("model."): v for k, v in saved_trainable(state).items()
               if not k.startswith("chars.")}  # fmt: skip  # a character head ships as its own char_head.npz
    adapters, settings = run_adapters(state, trained)
    other = sorted(k for k in trained if not k.startswith(PARTS))
    if other:
        raise ConfigError(
            f"the run trained {other[:3]}: only the connector, encoder, CTC head and LoRA adapters can be stacked"
        )
    out, lora = dict(shipped), None
    if adapters:  # SHIPPED's adapters give way to both sets stacked
        below = {k: out.pop(k) for k in [k for k in out if LORA_KEY.match(k)]}
        merged, lora = stacked_lora(below, meta or {}, adapters, settings)
        out |= merged
    for key, value in trained.items():
        if key in shipped and shipped[key].shape != value.shape:
            raise ConfigError(f"{key}: the run's shape {tuple(value.shape)} != the shipped {tuple(shipped[key].shape)}")
        if key not in shipped and not key.startswith("ctc."):
            raise ConfigError(f"{key} is not in the shipped weights (another model?)")
        # the encoder and LoRA travel in float16 (as save_trainable writes them), the rest as trained
        out[key] = value.half() if key.startswith("encoder.") else value.float()
    encoder = sorted(k for k in trained if k.startswith("encoder."))
    if encoder and set(encoder) != {k for k in shipped if k.startswith("encoder.")}:
        raise ConfigError("the run's encoder tensors are not the shipped encoder's key set")
    has_ctc = any(k.startswith("ctc.") for k in out)
    if has_ctc != dims.audio.ctc_head:
        raise ConfigError(f"the stacked weights {'have' if has_ctc else 'lack'} a CTC head; their dims say "
                          f"ctc_head={dims.audio.ctc_head}")  # fmt: skip
    return {k: v.contiguous() for k, v in out.items()}, lora


def ship(run: Path, onto: Path, out: Path) -> Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    if not onto.is_file():
        raise ConfigError(f"--onto {onto} not found")
    if out.resolve() == onto.resolve():
        raise ConfigError("--out is the --onto file: write the new weights elsewhere, then replace it")
    state, base = run_base(run, onto)
    with safe_open(str(onto), framework="pt") as f:
        meta = dict(f.metadata() or {})
        shipped = {k: f.get_tensor(k) for k in f.keys()}
    if "dims" not in meta:
        raise ConfigError(f"{onto} carries no dims in its metadata")
    if read_dims(base).decoder != ModelDims.from_json(meta["dims"]).decoder:
        raise ConfigError(f"{base} and {onto} are different models")
    has_ctc = any(k.startswith("model.ctc.") for k in saved_trainable(state))
    dims = ModelDims.from_json(meta["dims"])
    if has_ctc:
        dims = replace(dims, audio=replace(dims.audio, ctc_head=True))
    tensors, lora = stacked(state, shipped, dims, meta)
    trained = set(meta.get("train", "").split(",")) | set(state["config"]["train"]) | ({"ctc"} if has_ctc else set())
    meta |= {"dims": dims.to_json(), "train": ",".join(sorted(trained - {""})), "stacked_from": str(run.resolve())}
    meta |= lora.to_metadata() if lora is not None else {}
    return atomic_file(out, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the run's output_dir (its state.pt)")
    parser.add_argument("--onto", type=Path, required=True, help="the weights its base checkpoint was built from")
    parser.add_argument("-o", "--out", type=Path, required=True, help="the new weights file")
    args = parser.parse_args(argv)
    try:
        path = ship(args.run, args.onto, args.out)
    except FaEdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

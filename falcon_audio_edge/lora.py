"""LoRA adapters from training, merged into the LLM's own weights: ``W <- W + (alpha / r) B A``.

The trained-weights file (``trainable.safetensors``) keeps peft's parameter names and the adapter settings in
its metadata. Merging needs neither peft nor the training code: each ``lora_A`` / ``lora_B`` pair maps to one
``nn.Linear`` of the LLM through the pattern below; an unmapped key, a half pair, a wrong shape or a target
layer without its adapter is an error, never skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from falcon_audio_edge.errors import CheckpointError

# peft's name for one adapter matrix of ``llm`` (a PeftModel around the causal LM)
LORA_KEY = re.compile(r"^llm\.base_model\.model\.(?P<module>.+)\.lora_(?P<part>[AB])\.default\.weight$")


@dataclass(frozen=True)
class LoraSettings:
    r: int
    alpha: int
    targets: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha < 1 or not self.targets:
            raise CheckpointError(f"bad LoRA settings: r={self.r}, alpha={self.alpha}, targets={list(self.targets)}")

    @property
    def scale(self) -> float:
        return self.alpha / self.r

    def to_metadata(self) -> dict[str, str]:
        return {"lora_r": str(self.r), "lora_alpha": str(self.alpha), "lora_targets": ",".join(self.targets)}

    @classmethod
    def from_metadata(cls, meta: dict[str, str], source: str) -> LoraSettings:
        try:
            return cls(int(meta["lora_r"]), int(meta["lora_alpha"]), tuple(meta["lora_targets"].split(",")))
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"{source} holds LoRA weights but no valid lora_r/lora_alpha/lora_targets") from exc


def pair_adapters(tensors: dict, source: str) -> dict[str, tuple]:
    """``{module path: (A, B)}`` from peft-named tensors; anything else is an error."""
    parts: dict[str, dict[str, object]] = {}
    for key, value in tensors.items():
        match = LORA_KEY.match(key)
        if match is None:
            raise CheckpointError(f"{source}: {key} is not a LoRA weight of the LLM")
        parts.setdefault(match["module"], {})[match["part"]] = value
    half = sorted(name for name, pair in parts.items() if set(pair) != {"A", "B"})
    if half:
        raise CheckpointError(f"{source}: LoRA layers without both lora_A and lora_B: {half[:5]}")
    return {name: (pair["A"], pair["B"]) for name, pair in parts.items()}


def merge_lora(llm, tensors: dict, settings: LoraSettings, source: str) -> int:
    """Add every adapter to its layer's weight in place; returns the number of layers changed."""
    import torch

    adapters = pair_adapters(tensors, source)
    linears = {n: m for n, m in llm.named_modules() if isinstance(m, torch.nn.Linear)}
    targets = {n for n in linears if n.rsplit(".", 1)[-1] in settings.targets}
    unknown = sorted(set(adapters) - targets)
    missing = sorted(targets - set(adapters))
    if unknown or missing:
        raise CheckpointError(f"{source}: LoRA layers not in the LLM's targets {unknown[:5]}, missing {missing[:5]}")
    from falcon_audio_edge.checkpoint import shared_groups

    tied = {key for group in shared_groups(llm) if len(group) > 1 for key in group}
    shared = sorted(n for n in targets if f"{n}.weight" in tied)
    if shared:
        raise CheckpointError(f"{source}: LoRA on {shared[:5]}, whose weights are tied to another layer's")
    for name, (a, b) in sorted(adapters.items()):  # every shape checked before any weight changes
        out_dim, in_dim = linears[name].weight.shape
        if tuple(a.shape) != (settings.r, in_dim) or tuple(b.shape) != (out_dim, settings.r):
            raise CheckpointError(
                f"{source}: {name} LoRA shapes A {tuple(a.shape)}, B {tuple(b.shape)} do not fit weight "
                f"{(out_dim, in_dim)} with r={settings.r}"
            )
    with torch.no_grad():
        for name, (a, b) in adapters.items():
            weight = linears[name].weight
            # (out, r) @ (r, in) -> (out, in), in float64: a float32 sum would depend on the order the CPU's matmul
            # kernel adds the rank's terms in, so the same files would build different weights on different
            # machines. Adapters are saved in float16: each product is exact in float64 and so is their sum while
            # the terms' exponents lie within ~25 binary places of each other, whatever the order
            delta = b.double() @ a.double() * settings.scale
            weight.add_(delta.to(weight.dtype))
    return len(adapters)

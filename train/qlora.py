"""bitsandbytes in the recipe: QLoRA (the LLM's decoder-layer linears in 4-bit NF4, frozen, with LoRA adapters
trained on top) and 8-bit AdamW.

Only the linears inside the decoder layers are quantized; the token embeddings (tied to the output head in
SmolLM2 and Falcon3) and the norms stay as they are. The checkpoint a QLoRA run saves is not the NF4 copy: the
base checkpoint is loaded again, the run's encoder, connector and CTC head are copied into it from the trained
model, and the adapters are merged into its full-precision weights (``full_precision_model``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from falcon_audio_edge.errors import ConfigError
from falcon_audio_edge.lora import LoraSettings

QUANT_TYPE = "nf4"  # the QLoRA paper's 4-bit NormalFloat


def bitsandbytes(why: str):
    """The bitsandbytes module, or a ConfigError saying how to install it."""
    try:
        import bitsandbytes as bnb
    except ImportError as exc:
        raise ConfigError(
            f"{why} uses bitsandbytes, which is not installed: pip install 'falcon-audio-edge[qlora]' "
            "(or set load_in_4bit: false and optimizer: adamw)"
        ) from exc
    return bnb


def check_bitsandbytes(cfg, device: torch.device) -> None:
    """QLoRA and 8-bit AdamW train on a CUDA GPU, with bitsandbytes installed; elsewhere a ConfigError naming
    the setting. (bitsandbytes has a CPU backend too, but its 4-bit inference path there fails on layers narrower
    than 64, and the recipe never needs it on the CPU: plain bf16 LoRA and AdamW run there.)"""
    asked = [
        name
        for name, on in (("load_in_4bit", cfg.load_in_4bit), ("optimizer adamw8bit", cfg.optimizer == "adamw8bit"))
        if on
    ]
    if not asked:
        return
    if device.type != "cuda":
        raise ConfigError(
            f"{' and '.join(asked)} {'need' if len(asked) > 1 else 'needs'} a CUDA GPU (this run is on {device.type}); "
            "on the CPU use load_in_4bit: false and optimizer: adamw"
        )
    bitsandbytes(asked[0])


def decoder_linears(llm: nn.Module) -> dict[str, nn.Linear]:
    """Every ``nn.Linear`` inside the decoder layers (attention and MLP projections), by module path."""
    return {
        name: module
        for name, module in llm.named_modules()
        if isinstance(module, nn.Linear) and ".layers." in f".{name}"
    }


def quantize_llm(llm: nn.Module, device: torch.device, compute_dtype: torch.dtype) -> int:
    """Swap the decoder layers' linears for frozen NF4 ``Linear4bit`` layers on ``device`` (the weights are
    quantized as they land there); returns the count. The LLM is then marked as loaded in 4 bits, as transformers
    marks one, so that peft puts its 4-bit LoRA layers over these (their merge dequantizes first)."""
    bnb = bitsandbytes("load_in_4bit")
    linears = decoder_linears(llm)
    if not linears:
        raise ConfigError("load_in_4bit: the LLM has no linear layers inside its decoder layers to quantize")
    for name, linear in linears.items():
        quantized = bnb.nn.Linear4bit(
            linear.in_features, linear.out_features, bias=linear.bias is not None,
            compute_dtype=compute_dtype, quant_type=QUANT_TYPE, device="meta",
        )  # fmt: skip
        quantized.weight = bnb.nn.Params4bit(linear.weight.data, requires_grad=False, quant_type=QUANT_TYPE)
        if linear.bias is not None:
            quantized.bias = nn.Parameter(linear.bias.data, requires_grad=False)
        parent, _, child = name.rpartition(".")
        setattr(llm.get_submodule(parent), child, quantized.to(device))
    llm.is_loaded_in_4bit = True
    return len(linears)


def full_precision_model(base_checkpoint: str | Path, trained, lora: LoraSettings):
    """The base checkpoint loaded again in full precision, with a QLoRA run's trained ``model`` put into it: its
    encoder, connector and CTC head copied (every key and shape checked), its adapters merged into the float
    weights (``merge_lora``). This is what the run saves as its checkpoint, rather than the NF4 copy."""
    from falcon_audio_edge.checkpoint import copy_state, load_checkpoint
    from falcon_audio_edge.lora import merge_lora

    model = load_checkpoint(base_checkpoint).model
    if trained.ctc is not None:  # the run may have added one
        model.add_ctc_head()
    for part in ("encoder", "connector", "ctc"):
        module = getattr(trained, part)
        if module is not None:
            state = {k: v.detach().float().cpu() for k, v in module.state_dict().items()}
            copy_state(getattr(model, part), state, f"the QLoRA run's {part}")
    adapters = {f"llm.{k}": v.detach().float().cpu() for k, v in trained.llm.named_parameters() if ".lora_" in k}
    merge_lora(model.llm, adapters, lora, "the QLoRA run")
    return model


def adamw8bit(params: list[dict], learning_rate: float, weight_decay: float) -> torch.optim.Optimizer:
    return bitsandbytes("optimizer adamw8bit").optim.AdamW8bit(params, lr=learning_rate, weight_decay=weight_decay)

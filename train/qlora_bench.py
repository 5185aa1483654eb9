"""GPU memory and step time of the recipe's LLM-side training step, full-precision base against QLoRA.

``python -m falcon_audio_edge.train.qlora_bench --preset falcon3-audio-1b --out docs/qlora-gpu.md``

The step is the trainer's own: LoRA adapters (``with_lora``) on a frozen decoder, the loss on target positions
only (``target_loss``), bf16 autocast. Two ways to hold the frozen base: bf16 (what ``frozen_to_bf16`` does) with
AdamW, and NF4 (``quantize_llm``) with 8-bit AdamW. The decoder has the preset's dims and random weights: memory
and time depend on the sizes, not on the values. The input is random audio-like embeddings that need gradients, as
the connector's output does. Needs a CUDA GPU and bitsandbytes.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from falcon_audio_edge.config import preset_dims
from falcon_audio_edge.errors import CheckpointError, ConfigError
from falcon_audio_edge.lora import LoraSettings

GIB = 2**30


@dataclass
class StepMeasurement:
    mode: str
    held_gib: float  # GPU memory held between steps (after a warm-up step): base, adapters, optimizer states
    peak_gib: float  # the most GPU memory held during the timed steps
    ms_per_step: float
    first_loss: float
    last_loss: float


def build(dims, quantized: bool, lora: LoraSettings, device: torch.device):
    """The decoder as the trainer holds it: frozen base (NF4 or bf16), LoRA adapters in float32."""
    from falcon_audio_edge.train.qlora import quantize_llm
    from falcon_audio_edge.train.trainer import frozen_to_bf16, with_lora
    from transformers import LlamaForCausalLM

    from falcon_audio_edge.model import llama_config

    torch.manual_seed(0)
    llm = LlamaForCausalLM(llama_config(dims.decoder)).requires_grad_(False)  # random weights, float32, CPU
    if quantized:
        quantize_llm(llm, device, torch.bfloat16)
    llm = with_lora(llm.to(device), lora)
    kept = frozen_to_bf16(llm)  # as the trainer does: frozen float weights to bf16, float32 originals on the host
    return llm, kept


def measure(dims, quantized: bool, lora: LoraSettings, shape: tuple[int, int, int], steps: int) -> StepMeasurement:
    from falcon_audio_edge.train.qlora import adamw8bit
    from falcon_audio_edge.train.trainer import IGNORE, target_loss

    device = torch.device("cuda")
    gc.collect()  # the last mode's model is gone before this one's is built
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    llm, _kept = build(dims, quantized, lora, device)
    params = [p for p in llm.parameters() if p.requires_grad]
    optimizer = adamw8bit([{"params": params}], 1e-4, 0.0) if quantized else torch.optim.AdamW(params, lr=1e-4)
    batch, length, n_targets = shape
    gen = torch.Generator(device).manual_seed(1)
    embeds = 0.02 * torch.randn(batch, length, dims.decoder.hidden, device=device, generator=gen)
    labels = torch.full((batch, length), IGNORE, device=device)
    labels[:, -n_targets:] = torch.randint(0, dims.decoder.vocab_size, (batch, n_targets), device=device, generator=gen)
    mask = torch.ones(batch, length, dtype=torch.long, device=device)
    losses = []

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = target_loss(llm, embeds.clone().requires_grad_(True), mask, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))

    step()  # warm-up: kernels chosen, optimizer states made
    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated() / GIB
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    elapsed = (time.perf_counter() - start) / steps
    mode = "NF4 base + 8-bit AdamW (QLoRA)" if quantized else "bf16 base + AdamW"
    result = StepMeasurement(mode, held, torch.cuda.max_memory_allocated() / GIB, 1000 * elapsed, losses[0], losses[-1])
    return result


def report(args, dims, rows: list[StepMeasurement]) -> str:
    import bitsandbytes
    import transformers

    lines = [
        "# QLoRA on a GPU: memory and step time", "",
        f"Command: `python -m falcon_audio_edge.train.qlora_bench {' '.join(sys.argv[1:])}`", "",
        f"Machine: {torch.cuda.get_device_name()}; torch {torch.__version__}, bitsandbytes {bitsandbytes.__version__}, "
        f"transformers {transformers.__version__}.",
        f"Decoder: preset `{args.preset}` ({dims.decoder.n_layers} layers, hidden {dims.decoder.hidden}, "
        f"vocab {dims.decoder.vocab_size}), random weights. LoRA r={args.lora_r} on {args.lora_targets}. "
        f"Batch {args.batch} x {args.length} positions, loss on the last {args.targets}; "
        f"{args.steps} timed steps after one warm-up. Held between steps: the frozen base, the adapters and the "
        "optimizer's states (read after the warm-up step); the peak adds a step's activations and gradients.", "",
        "| frozen base, optimizer | GPU memory held between steps (GiB) | peak in a step (GiB) | ms per step | "
        "loss first -> last |",
        "| --- | --- | --- | --- | --- |",
    ]  # fmt: skip
    for r in rows:
        lines.append(f"| {r.mode} | {r.held_gib:.2f} | {r.peak_gib:.2f} | {r.ms_per_step:.1f} | "
                     f"{r.first_loss:.3f} -> {r.last_loss:.3f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="falcon3-audio-1b")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=160, help="positions per example (prompt, audio, target)")
    parser.add_argument("--targets", type=int, default=40, help="target positions per example (the loss)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--lora-targets", default="q_proj,v_proj")
    parser.add_argument("--out", type=Path, help="write the markdown report here")
    args = parser.parse_args(argv)
    try:
        if not torch.cuda.is_available():
            raise ConfigError("qlora_bench measures GPU memory: it needs a CUDA GPU")
        if not 0 < args.targets < args.length or args.batch < 1 or args.steps < 1:
            raise ConfigError(f"need 0 < targets < length, batch >= 1, steps >= 1; got targets={args.targets}, "
                              f"length={args.length}, batch={args.batch}, steps={args.steps}")  # fmt: skip
        dims = preset_dims(args.preset)
        lora = LoraSettings(args.lora_r, 2 * args.lora_r, tuple(args.lora_targets.split(",")))
    except (ConfigError, CheckpointError) as exc:  # LoraSettings checks its own values
        print(f"error: {exc}", file=sys.stderr)
        return 2
    shape = (args.batch, args.length, args.targets)
    rows = [measure(dims, quantized, lora, shape, args.steps) for quantized in (False, True)]
    text = report(args, dims, rows)
    print(text)
    if args.out:
        from falcon_audio_edge.files import atomic_file

        atomic_file(args.out, lambda tmp: tmp.write_text(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Whether a run trains under bf16 autocast: only where the device does bf16 arithmetic natively, and on a CPU
only where it is also measured faster.

A CPU without AVX512-BF16 or AMX has no bf16 instructions: PyTorch then runs bf16 matrix products on a generic
fallback, many times slower than float32. One with AVX512-BF16 but no AMX can still be slower in bf16 (an Intel
Xeon here: 19.2 ms against 10.3 ms for the product below, and a training step about 1.5 times slower).
``python -m falcon_audio_edge.train.precision`` times one product both ways on this CPU. ``bf16: auto`` (the
default) turns autocast on only where the hardware has it and, on a CPU, where that product is faster in bf16;
``bf16: true`` on a CPU without it is kept, with a warning.
"""

from __future__ import annotations

import time
import warnings

import torch

CPU_BF16_CHECKS = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own probes


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` does bf16 arithmetic in hardware (a CUDA GPU that supports it; a CPU with AVX512-BF16 or
    AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return any(getattr(torch.cpu, name, lambda: False)() for name in CPU_BF16_CHECKS)
    return False


def bf16_is_faster() -> bool:
    """Whether this CPU does a bf16 matrix product faster than a float32 one (timed: 0.2-0.3 s on 2 cores)."""
    times = measure(repeats=5)
    return times["bfloat16"] < times["float32"]


def use_bf16(setting: bool | str, device: torch.device) -> bool:
    """The config's ``bf16`` for this device: ``auto`` follows the hardware (on a CPU, also the timing of a bf16
    product against a float32 one); ``true`` without it warns."""
    native = native_bf16(device)
    if setting == "auto":
        return native and (device.type != "cpu" or bf16_is_faster())
    if setting and not native:
        missing = " (no AVX512-BF16 or AMX)" if device.type == "cpu" else ""
        warnings.warn(
            f"bf16: true on a {device.type} without bf16 arithmetic{missing}: its matrix products "
            "run on a slow fallback, many times slower than float32; bf16: auto or false avoids it",
            stacklevel=2,
        )
    return bool(setting)


def same_on_every_process(flag: bool) -> bool:
    """Process 0's ``flag`` on every process of a distributed run, else ``flag``."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor([int(flag)])
    dist.broadcast(value, src=0)
    return bool(value.item())


def run_bf16(setting: bool | str, device: torch.device, main_process: bool) -> bool:
    """``use_bf16`` for a run, decided on the main process alone (the others would time the product on the same
    cores at the same moment) and broadcast to the rest."""
    return same_on_every_process(use_bf16(setting, device) if main_process else False)


def measure(rows: int = 1600, inner: int = 1536, cols: int = 576, repeats: int = 3) -> dict[str, float]:
    """Milliseconds of one (rows x inner) @ (inner x cols) product in float32 and in bfloat16 on this CPU."""
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(rows, inner, dtype=dtype), torch.randn(inner, cols, dtype=dtype)
        a @ b  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        out[str(dtype).removeprefix("torch.")] = (time.perf_counter() - start) / repeats * 1000
    return out


if __name__ == "__main__":
    cpu = torch.device("cpu")
    times = measure()
    print(f"native bf16 on this CPU: {native_bf16(cpu)} (bf16: auto -> {use_bf16('auto', cpu)})")
    print(", ".join(f"{name} {ms:.1f} ms" for name, ms in times.items()))

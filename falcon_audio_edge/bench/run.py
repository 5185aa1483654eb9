"""Run a benchmark: every target in its own worker process, then the ratios against the baselines.

Nothing is written until every target has run: a failed target is an error naming it, and the result
files (markdown, JSON, plot) are written to temporary names and renamed into place at the end.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from falcon_audio_edge.audio import CHUNK_LENGTH
from falcon_audio_edge.bench import limits as limits_mod
from falcon_audio_edge.errors import BundleError, ConfigError, FaEdgeError
from falcon_audio_edge.runtime.bundle import read_bundle
from falcon_audio_edge.runtime.extra_bufts import ENV as EXTRA_BUFTS_ENV
from falcon_audio_edge.runtime.extra_bufts import decision
from falcon_audio_edge.settings import default_threads

STAGES = ("mel_ms", "encoder_ms", "prefill_ms", "first_token_ms", "decode_tok_s", "total_ms")


@dataclass(frozen=True)
class BenchSettings:
    """What a benchmark run measures; validated here, the CLI only builds it."""

    seconds: tuple[float, ...] = (5.0, 15.0, 30.0)
    repeats: int = 3
    warmup: int = 1
    tokens: int = 32
    threads: int = 0
    prompt: str | None = None
    baselines: bool = True
    worker_timeout_s: int = 3600

    def __post_init__(self) -> None:
        if not self.seconds:
            raise ConfigError("seconds: give at least one clip length")
        bad = [s for s in self.seconds if not 0 < s <= CHUNK_LENGTH]
        if bad:
            raise ConfigError(f"clip lengths {bad} are outside (0, {CHUNK_LENGTH}] s (one model window)")
        for name in ("repeats", "tokens"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if self.warmup < 0 or self.threads < 0:
            raise ConfigError(f"warmup and threads must be >= 0, got {self.warmup} and {self.threads}")

    @property
    def n_threads(self) -> int:
        return self.threads or default_threads()


def parse_seconds(text: str) -> tuple[float, ...]:
    """ "5,15,30" -> (5.0, 15.0, 30.0); anything else is an error naming it."""
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise ConfigError(f"--audio-seconds must be numbers separated by commas, got {text!r}") from exc


@dataclass
class Stat:
    median: float
    min: float
    max: float

    @classmethod
    def of(cls, values: list[float]) -> Stat:
        return cls(statistics.median(values), min(values), max(values))


@dataclass
class TargetResult:
    """One configuration: stage statistics per clip length (keys: seconds as text)."""

    label: str
    kind: str  # bundle | torch | llama_text | cascade
    checkpoint: str | None  # the PyTorch checkpoint behind it (bundles and their PyTorch baselines share it)
    gguf: str | None  # the decoder GGUF (bundles and their llama.cpp baselines share it)
    stages: dict[str, dict[str, Stat]]
    peak_rss_mb: float
    disk_mb: float | None = None
    weight_bytes: int | None = None  # the decoder GGUF's size (decode reads all of it per token)
    prompt_positions: dict[str, int] = field(default_factory=dict)
    dims: dict | None = None


@dataclass
class Target:
    label: str
    kind: str
    spec: dict
    checkpoint: str | None = None
    gguf: str | None = None
    disk_mb: float | None = None
    weight_bytes: int | None = None
    dims: dict | None = None


def check_bundle(path: Path):
    """The bundle, or a clear error (files are checked for presence; checksums are not rehashed)."""
    try:
        return read_bundle(path, verify=False)
    except FaEdgeError as exc:
        raise BundleError(f"bundle {path} does not load: {exc}") from exc


def _name(path: Path) -> str:
    """A short label: the folder's name, with its parent's where the name alone is generic."""
    generic = path.name in ("checkpoint", "bundle") or path.name.startswith("bundle-")
    return f"{path.parent.name}/{path.name}" if generic else path.name


def plan_targets(
    paths: list[Path], settings: BenchSettings, whisper: Path | None, cascade: list[Path] | None = None
) -> list[Target]:
    """Each bundle (a quantized one also with llama.cpp's extra buffers off, where they are on), then its
    baselines: PyTorch fp32 and bf16 of its checkpoint (once per checkpoint), llama-cpp-python's text decode of
    its GGUF, and with a Whisper CTranslate2 folder the cascade."""
    base = {"seconds": list(settings.seconds), "repeats": settings.repeats, "warmup": settings.warmup,
            "tokens": settings.tokens, "threads": settings.n_threads, "prompt": settings.prompt}  # fmt: skip
    bundles = [(Path(p), check_bundle(Path(p))) for p in paths]  # every bundle checked before anything runs
    out: list[Target] = []
    torch_done: set[str] = set()
    for path, bundle in bundles:
        ckpt = bundle.manifest.get("source", {}).get("checkpoint")
        ckpt = ckpt if ckpt and Path(ckpt).is_dir() else None
        gguf, dims = str(bundle.decoder_path), bundle.manifest["dims"]
        out.append(Target(_name(path), "bundle", {**base, "kind": "bundle", "path": str(path)}, ckpt, gguf,
                          bundle.size_bytes / 1e6, bundle.decoder_path.stat().st_size, dims))  # fmt: skip
        if decision().on and bundle.decoder_type not in ("f16", "f32"):  # FA_EDGE_EXTRA_BUFTS=auto, proven
            spec = {**base, "kind": "bundle", "path": str(path), "extra_bufts": "off"}
            out.append(replace(out[-1], label=f"{_name(path)} · extra buffers off", spec=spec))
        if not settings.baselines:
            continue
        if ckpt and ckpt not in torch_done:
            torch_done.add(ckpt)
            for dtype, short in (("float32", "fp32"), ("bfloat16", "bf16")):
                spec = {**base, "kind": "torch", "path": ckpt, "dtype": dtype}
                out.append(Target(f"{_name(Path(ckpt))} · PyTorch {short}", "torch", spec, ckpt, None, dims=dims))
        spec = {**base, "kind": "llama_text", "gguf": gguf}
        out.append(Target(f"{_name(path)} · llama.cpp text", "llama_text", spec, None, gguf))
        if whisper is not None and (cascade is None or path in cascade):
            spec = {**base, "kind": "cascade", "gguf": gguf, "whisper": str(whisper), "dims": dims}
            out.append(Target(f"{_name(path)} · cascade", "cascade", spec, None, gguf))
    return out


def run_worker(target: Target, timeout_s: int) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if target.spec.get("extra_bufts") == "off":
        env[EXTRA_BUFTS_ENV] = "off"
    cmd = [sys.executable, "-m", "falcon_audio_edge.bench.worker"]
    try:
        proc = subprocess.run(cmd, input=json.dumps({**target.spec, "label": target.label}), capture_output=True,
                              text=True, timeout=timeout_s, env=env)  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise FaEdgeError(f"benchmark target {target.label!r} ran over {timeout_s} s") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise FaEdgeError(f"benchmark target {target.label!r} failed: " + " | ".join(tail))
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarise(target: Target, raw: dict) -> TargetResult:
    stages: dict[str, dict[str, Stat]] = {}
    positions = {}
    for seconds, runs in raw["runs"].items():
        stages[seconds] = {k: Stat.of([r[k] for r in runs]) for k in STAGES if all(k in r for r in runs)}
        if runs and "prompt_positions" in runs[0]:
            positions[seconds] = runs[0]["prompt_positions"]
    return TargetResult(target.label, target.kind, target.checkpoint, target.gguf, stages, raw["peak_rss_mb"],
                        target.disk_mb, target.weight_bytes, positions, target.dims)  # fmt: skip


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gb = float("nan")
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": default_threads(), "memory_gib": round(mem_gb, 1),
            "python": platform.python_version(), "platform": platform.platform(), "bf16": bf16_instructions(),
            "extra_bufts": decision().line()}  # fmt: skip


def bf16_instructions() -> str:
    """What this CPU has for bfloat16 arithmetic: PyTorch's bf16 products are fast with AMX, and slower than float32
    without it on the CPUs measured here (docs/training.md)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        flags = set(next(line for line in lines if line.startswith("flags")).split())
    except (OSError, StopIteration):
        return "unknown"
    return "AMX" if "amx_bf16" in flags else "AVX512-BF16, no AMX" if "avx512_bf16" in flags else "none"


@dataclass
class BenchReport:
    settings: dict
    machine: dict
    limits: dict
    results: list[TargetResult]
    command: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def run_bench(
    bundles: list[Path],
    settings: BenchSettings,
    whisper: Path | None = None,
    cascade: list[Path] | None = None,
    progress=print,
) -> BenchReport:
    """Measure every bundle and its baselines; ``cascade`` limits the cascade baseline to those bundles."""
    if not bundles:
        raise ConfigError("no bundles to benchmark")
    if whisper is not None and not (Path(whisper) / "model.bin").is_file():
        raise ConfigError(f"--whisper {whisper} is not a CTranslate2 Whisper folder (no model.bin)")
    targets = plan_targets([Path(b) for b in bundles], settings, whisper, cascade)
    progress(f"machine limits ({settings.n_threads} threads)...")
    lim = limits_mod.measure(settings.n_threads)
    results: list[TargetResult] = []
    positions: dict[str, dict[str, int]] = {}  # GGUF -> prompt positions per clip length, from its bundle
    for i, target in enumerate(targets, 1):
        progress(f"[{i}/{len(targets)}] {target.label}")
        if target.kind == "llama_text":
            target.spec["positions"] = positions[target.gguf]
        result = summarise(target, run_worker(target, settings.worker_timeout_s))
        if target.kind == "bundle":
            positions[target.gguf] = result.prompt_positions
        results.append(result)
    return BenchReport(asdict(settings), machine(), asdict(lim), results)

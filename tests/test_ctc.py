"""CTC-guided transcription: the prefix scorer against brute force, the guided choice, settings, and the head
through a real export (PyTorch head vs the bundle's numpy head on the GGUF's token table)."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest

from falcon_audio_edge.errors import BundleError, ConfigError, FaEdgeError
from falcon_audio_edge.runtime.ctc import CTCHead, CTCPrefixScorer, guided_choice
from falcon_audio_edge.settings import DEFAULT_CTC_WEIGHT, TRANSCRIBE_PROMPT, GenerationSettings, ctc_weight_for
from tests.conftest import decoding_file, fa_edge


def random_log_probs(rng: np.random.Generator, frames: int, vocab: int) -> np.ndarray:
    x = rng.normal(size=(frames, 1 + vocab)) * 2.0
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))  # (T, 1 + V), blank first


def collapse(path: tuple[int, ...]) -> tuple[int, ...]:
    out, prev = [], 0
    for s in path:
        if s != 0 and s != prev:
            out.append(s - 1)
        prev = s
    return tuple(out)


def brute_force(x: np.ndarray) -> dict[tuple[int, ...], float]:
    """P(label sequence) for every sequence, by summing every alignment: (1 + V)^T paths."""
    probs: dict[tuple[int, ...], float] = {}
    for path in itertools.product(range(x.shape[1]), repeat=x.shape[0]):
        p = float(np.exp(sum(x[t, s] for t, s in enumerate(path))))
        key = collapse(path)
        probs[key] = probs.get(key, 0.0) + p
    return probs


def test_prefix_scores_equal_the_sum_over_every_alignment():
    rng = np.random.default_rng(0)
    x = random_log_probs(rng, frames=5, vocab=4)
    truth = brute_force(x)
    end = 3  # token 3 is the end of turn: its score is P(the audio says exactly the prefix)

    def prefix_prob(prefix: tuple[int, ...]) -> float:
        return sum(p for seq, p in truth.items() if seq[: len(prefix)] == prefix)

    for prefix in [(), (0,), (1,), (1, 1), (2, 0, 2)]:  # (1, 1): a repeat needs a blank between
        scorer = CTCPrefixScorer(x, end_token=end)
        for token in prefix:
            scorer.advance(token)
        assert np.isclose(np.exp(scorer.score), prefix_prob(prefix), rtol=1e-9)
        got = np.exp(scorer.scores(np.array([0, 1, 2, end])))
        want = [prefix_prob((*prefix, c)) for c in range(3)] + [truth.get(prefix, 0.0)]
        assert np.allclose(got, want, rtol=1e-9, atol=1e-300), prefix
        assert np.isclose(np.exp(scorer.full), truth.get(prefix, 0.0), rtol=1e-9)


def test_prefix_longer_than_the_audio_has_no_probability():
    x = random_log_probs(np.random.default_rng(1), frames=2, vocab=4)
    scorer = CTCPrefixScorer(x, end_token=3)
    scorer.advance(0)
    scorer.advance(1)
    assert np.all(np.isneginf(scorer.scores(np.array([0, 1, 2]))))  # a third token needs a third frame


def head_for(spoken: list[int], vocab: int = 6, hidden: int = 8, frames_per_token: int = 3):
    """A CTC head whose token table is the identity-like one-hot rows, and audio that says ``spoken``."""
    table = np.eye(vocab, hidden, dtype=np.float32)
    head = CTCHead(table=table, blank_weight=np.zeros(hidden, np.float32), blank_bias=0.0, log_scale=np.log(6.0))
    audio = np.concatenate([np.repeat(table[[t]], frames_per_token, axis=0) for t in spoken])  # (T, H)
    return head, audio


def test_head_log_probs_are_distributions_that_read_the_audio():
    head, audio = head_for([2, 4])
    logp = head.log_probs(audio)
    assert logp.shape == (6, 7) and np.allclose(np.exp(logp).sum(axis=1), 1.0, atol=1e-5)
    assert list(logp.argmax(axis=1)) == [3, 3, 3, 5, 5, 5]  # column 0 is the blank: token t is column t + 1
    with pytest.raises(BundleError, match="blank weight has shape"):
        CTCHead(table=np.zeros((6, 8), np.float32), blank_weight=np.zeros(7, np.float32), blank_bias=0, log_scale=0)


def test_head_posteriors_read_in_parts_equal_the_whole(monkeypatch):
    from falcon_audio_edge.runtime.ctc import TokenTable

    rng = np.random.default_rng(3)
    table, blank = rng.normal(size=(50, 8)).astype(np.float32), rng.normal(size=8).astype(np.float32)
    head = CTCHead(table=table, blank_weight=blank, blank_bias=0.2, log_scale=0.3)
    embeds = rng.normal(size=(11, 8)).astype(np.float32)
    whole = head.log_probs(embeds)
    scores = np.concatenate([embeds @ blank[:, None] + 0.2, embeds @ table.T * np.exp(0.3)], axis=1)
    assert np.allclose(whole, scores - np.log(np.exp(scores).sum(axis=1, keepdims=True)), atol=1e-5)
    monkeypatch.setattr(TokenTable, "PART", 16)  # 50 rows in parts of 16, 16, 16 and 2
    parted = head.posteriors(embeds)
    assert np.allclose(parted.dense(), whole, atol=1e-5) and np.allclose(np.exp(whole).sum(axis=1), 1.0, atol=1e-5)
    assert np.array_equal(np.sort(parted.top_ids, axis=1), np.sort(np.argsort(-whole[:, 1:], axis=1)[:, :4], axis=1))
    assert head.posteriors(embeds[:0]).dense().shape == (0, 51)  # no frames: nothing to read, no error


def test_an_int8_token_table_is_a_quarter_of_float32_and_reads_the_same():
    from falcon_audio_edge.runtime.ctc import TokenTable

    rng = np.random.default_rng(4)
    table = rng.normal(size=(300, 64)).astype(np.float32) * rng.uniform(0.1, 3.0, size=(300, 1)).astype(np.float32)
    table[7] = 0.0  # a row of zeros keeps a usable scale
    small = TokenTable.quantized(table)
    assert small.rows.dtype == np.int8 and small.rows.nbytes + small.scales.nbytes < table.nbytes * 0.27
    err = np.abs(small.take(np.arange(300)) - table)
    assert np.all(err <= small.scales[:, None] / 2 + 1e-6) and not small.take(np.array([7])).any()
    broken = table.copy()
    broken[11, 3] = np.nan
    with pytest.raises(BundleError, match=r"NaN or infinite values \(row 11\)"):
        TokenTable.quantized(broken)
    blank = rng.normal(size=64).astype(np.float32)
    exact = CTCHead(table=table, blank_weight=blank, blank_bias=0.1, log_scale=-1.0)
    int8 = CTCHead(table=small, blank_weight=blank, blank_bias=0.1, log_scale=-1.0)
    embeds = rng.normal(size=(40, 64)).astype(np.float32)
    want, got = exact.log_probs(embeds), int8.log_probs(embeds)
    assert np.abs(np.exp(got) - np.exp(want)).max() < 0.05  # sharp rows: logits of +-20
    assert (got.argmax(axis=1) == want.argmax(axis=1)).mean() >= 0.95


@pytest.mark.parametrize("spread", [1.0, 40.0])
def test_top_ids_are_the_largest_values_close_to_the_top_or_not(spread):
    """top_ids looks among the values within TOP_MARGIN of the largest first, among all where fewer are that close
    (spread 40: a peaked vocabulary whose k-th value is far below the top): the same ids as a full selection."""
    from falcon_audio_edge.runtime.ctc import TOP_MARGIN, top_ids

    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.standard_normal(5000) * spread
        x[rng.integers(5000)] += 3 * TOP_MARGIN * (spread > 1)  # one token far ahead of the rest
        for k in (1, 16, 64):
            want = np.sort(np.argsort(x)[-k:])
            np.testing.assert_array_equal(top_ids(x, k), want)
    assert list(top_ids(np.array([0.5, 0.1]), 4)) == [0, 1]


def test_guided_choice_follows_the_audio_where_the_llm_guesses():
    head, audio = head_for([2, 4])
    scorer = CTCPrefixScorer(head.log_probs(audio), end_token=5)
    logits = np.array([0.0, 0.0, 1.0, 0.0, 1.5, 0.0])  # the LLM prefers 4 first; the audio says 2, then 4
    assert guided_choice(logits, scorer, weight=0.0, n_candidates=3) == 4  # weight 0: the LLM alone
    first = guided_choice(logits, scorer, weight=DEFAULT_CTC_WEIGHT, n_candidates=3)
    assert first == 2
    scorer.advance(first)
    assert guided_choice(logits, scorer, weight=DEFAULT_CTC_WEIGHT, n_candidates=3) == 4
    scorer.advance(4)
    assert guided_choice(logits, scorer, weight=DEFAULT_CTC_WEIGHT, n_candidates=3) == 5  # all said: end of turn


def test_proposals_are_the_tokens_some_frame_finds_likely(monkeypatch):
    from falcon_audio_edge.runtime.ctc import DenseLogProbs, TokenTable

    head, audio = head_for([2, 4], vocab=12)
    logp = head.log_probs(audio)  # (6, 13): token 2 at frames 0-2, token 4 at frames 3-5
    for x in (DenseLogProbs(logp), head.posteriors(audio)):
        assert list(x.proposals(0.3)) == [2, 4]  # the blank (column 0) is never proposed
        assert len(x.proposals(1e-6)) > 2 and len(x.proposals(0.99)) == 0 and len(x.proposals(0.0)) == 0
    rng = np.random.default_rng(5)
    table, blank = rng.normal(size=(40, 8)).astype(np.float32), rng.normal(size=8).astype(np.float32)
    head = CTCHead(table=table, blank_weight=blank, blank_bias=0.1, log_scale=0.8)
    embeds = rng.normal(size=(11, 8)).astype(np.float32)
    monkeypatch.setattr(TokenTable, "PART", 16)  # the frame tops gathered part by part
    lazy, dense = head.posteriors(embeds), DenseLogProbs(head.log_probs(embeds))
    for p in (0.02, 0.1, 0.3):
        want = np.flatnonzero((np.exp(head.log_probs(embeds)[:, 1:]) >= p).any(axis=0))
        want = [t for t in want if (np.argsort(-head.log_probs(embeds)[:, 1:], axis=1)[:, :4] == t).any()]
        assert list(lazy.proposals(p)) == list(dense.proposals(p)) == want


def test_proposals_let_the_audio_say_what_the_llm_did_not_rank():
    head, audio = head_for([2, 4])
    logits = np.array([0.0, 3.0, 0.0, 0.0, 2.0, 0.0])  # the LLM's top 2: 1 and 4; the audio starts with 2
    scorer = CTCPrefixScorer(head.log_probs(audio), end_token=5)
    assert guided_choice(logits, scorer, weight=0.7, n_candidates=2) != 2  # 2 is never scored
    proposed = scorer.x.proposals(0.3)
    assert guided_choice(logits, scorer, weight=0.7, n_candidates=2, proposed=proposed) == 2
    assert guided_choice(logits, scorer, weight=0.0, n_candidates=2, proposed=proposed) == 1  # weight 0: the LLM


def test_guided_choice_falls_back_to_the_llm_when_the_audio_is_too_short():
    head, audio = head_for([1], frames_per_token=1)
    scorer = CTCPrefixScorer(head.log_probs(audio), end_token=5)
    scorer.advance(1)
    scorer.advance(2)  # longer than the one frame: no candidate has CTC probability
    logits = np.array([0.0, 0.0, 0.0, 3.0, 0.0, 0.0])
    assert guided_choice(logits, scorer, weight=0.9, n_candidates=2) == 3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"ctc_weight": 1.0}, r"ctc_weight must be a number from 0 up to \(not including\) 1, got 1.0"),
        ({"ctc_weight": -0.1}, "got -0.1"),
        ({"ctc_weight": 0.5, "temperature": 0.7}, "ctc_weight=0.5 rescores greedy decoding: it needs temperature 0"),
        ({"ctc_candidates": 0}, "ctc_candidates must be an integer from 1 to 256, got 0"),
        ({"ctc_proposal_prob": 1.0}, r"ctc_proposal_prob must be a number from 0 up to \(not including\) 1, got 1.0"),
        ({"ctc_proposal_prob": "0.1"}, "ctc_proposal_prob must be a number"),
    ],
)
def test_generation_settings_refuse_bad_ctc_values(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        GenerationSettings(**kwargs)


def test_ctc_weight_defaults_to_guidance_only_for_transcription_by_a_model_with_a_head():
    assert ctc_weight_for(TRANSCRIBE_PROMPT, True) == DEFAULT_CTC_WEIGHT
    assert ctc_weight_for(TRANSCRIBE_PROMPT, False) == 0.0
    assert ctc_weight_for(None, True) == 0.0 and ctc_weight_for("Summarise it.", True) == 0.0
    assert ctc_weight_for(TRANSCRIBE_PROMPT, True, 0.0) == 0.0 and ctc_weight_for(None, True, 0.3) == 0.3


def test_bundle_head_matches_the_pytorch_head(ctc_bundle, clips):
    from falcon_audio_edge.reference import open_checkpoint
    from falcon_audio_edge.runtime.backend import open_bundle
    from falcon_audio_edge.runtime.bundle import CTC_FILE, read_bundle

    ckpt, bundle = ctc_bundle
    assert read_bundle(bundle).ctc_path == bundle / CTC_FILE and (bundle / CTC_FILE).is_file()
    embeds = np.random.default_rng(0).normal(size=(9, 32)).astype(np.float32) * 0.5
    with open_bundle(bundle) as chat, open_checkpoint(ckpt) as ref:
        assert chat.has_ctc_head and ref.has_ctc_head
        lazy, want = chat.backend.ctc_posteriors(embeds), ref.backend.ctc_posteriors(embeds)
        got = lazy.dense()
        assert np.allclose(lazy.columns(np.array([3, 7])), want[:, [4, 8]], atol=1e-4)  # read column by column
        assert got.shape == want.shape == (9, 1 + chat.dims.decoder.vocab_size)
        assert np.abs(got - want).max() < 1e-4
        gen = GenerationSettings(max_tokens=6, ctc_weight=DEFAULT_CTC_WEIGHT)
        guided = chat.ask(clips["q0"], TRANSCRIBE_PROMPT, gen).run()
        chat.reset()
        plain = chat.ask(clips["q0"], TRANSCRIBE_PROMPT, GenerationSettings(max_tokens=6)).run()
        reference = ref.ask(clips["q0"], TRANSCRIBE_PROMPT, gen).run()
        proposing = replace(gen, ctc_proposal_prob=0.01, ctc_candidates=1)
        chat.reset()
        ref.reset()
        heard = chat.ask(clips["q0"], TRANSCRIBE_PROMPT, proposing).run()
        assert heard.tokens == ref.ask(clips["q0"], TRANSCRIBE_PROMPT, proposing).run().tokens
    assert 1 <= len(guided.tokens) <= 6 and guided.tokens == reference.tokens  # f32 decoder: the same choices
    assert guided.tokens != plain.tokens  # the head changed what a random model says


def test_a_model_without_a_head_refuses_ctc_guidance(bundle_f32, clips):
    from falcon_audio_edge.runtime.backend import open_bundle

    with open_bundle(bundle_f32) as chat:
        assert not chat.has_ctc_head
        with pytest.raises(FaEdgeError, match="ctc_weight=0.5 needs a model with a CTC head"):
            chat.ask(clips["q0"], TRANSCRIBE_PROMPT, GenerationSettings(ctc_weight=0.5))
        # the conversation is untouched and usable
        assert chat.backend.n_past == 0
        assert chat.ask(clips["q0"], TRANSCRIBE_PROMPT, GenerationSettings(max_tokens=2)).run().tokens


def test_bundle_that_lost_its_head_file_is_refused(ctc_bundle, tmp_path):
    import json
    import shutil

    from falcon_audio_edge.runtime.bundle import CTC_FILE, MANIFEST_FILE, read_bundle

    broken = tmp_path / "bundle"
    shutil.copytree(ctc_bundle[1], broken)
    manifest = json.loads((broken / MANIFEST_FILE).read_text())
    del manifest["files"][CTC_FILE]
    (broken / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=f"does not list {CTC_FILE}"):
        read_bundle(broken)


def test_cli_transcribe_flags(ctc_bundle, bundle_f32, clips, tmp_path):
    bundle = str(ctc_bundle[1])
    out = fa_edge("ask", bundle, "--audio", str(clips["q0"]), "--transcribe", "--max-tokens", "4", "--json")
    assert json_of(out)["generated_tokens"] >= 1
    bad = fa_edge("ask", bundle, "--audio", str(clips["q0"]), "--transcribe", "--prompt", "Hi.", check=False)
    assert bad.returncode == 2 and "--transcribe and --prompt 'Hi.' ask for two different things" in bad.stderr
    weight = decoding_file(tmp_path, ctc_weight=0.4)
    bad = fa_edge("ask", str(bundle_f32), "--audio", str(clips["q0"]), "--decoding", weight, check=False)
    assert bad.returncode == 2 and "needs a model with a CTC head" in bad.stderr
    too_big = decoding_file(tmp_path, ctc_weight=1.5)
    bad = fa_edge("ask", bundle, "--audio", str(clips["q0"]), "--decoding", too_big, check=False)
    assert bad.returncode == 2 and f"--decoding {too_big}: ctc_weight must be a number from 0 up to" in bad.stderr
    for text, error in (("[0.5]", "must be a JSON object of"), ('{"ctc": 0.5}', "unknown decoding settings ['ctc']"),
                        ("{", "not a JSON file")):  # fmt: skip
        (tmp_path / "bad.json").write_text(text)
        bad = fa_edge("ask", bundle, "--audio", str(clips["q0"]), "--decoding", tmp_path / "bad.json", check=False)
        assert bad.returncode == 2 and f"error: --decoding {tmp_path / 'bad.json'}: " in bad.stderr, bad.stderr
        assert error in bad.stderr


def json_of(proc) -> dict:
    import json

    return json.loads(proc.stdout)


def test_the_token_table_read_from_the_gguf_header_equals_gguf_py_s(bundle_f32, bundle_f16, tmp_path):
    """runtime/gguf_tensor.py walks the header itself and maps the one tensor: the same table as gguf-py's reader
    for float and quantized GGUFs (f32 kept exact, the others int8 per row); a cut file or a missing tensor is a
    BundleError."""
    import gguf
    from falcon_audio_edge.quantize.decoder import quantize_decoder

    from falcon_audio_edge.runtime.ctc import TokenTable, gguf_token_table
    from falcon_audio_edge.runtime.gguf_tensor import read_tensor

    q8 = tmp_path / "q8.gguf"
    quantize_decoder(bundle_f32 / "decoder.gguf", q8, "q8_0", "f32", False, 1, False)
    for path in (bundle_f32 / "decoder.gguf", bundle_f16 / "decoder.gguf", q8):
        tensor = next(t for t in gguf.GGUFReader(str(path)).tensors if t.name == "token_embd.weight")
        want = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        want = want.reshape(-1, want.shape[-1])
        got = gguf_token_table(path, *want.shape, rows_per_part=7)
        if tensor.tensor_type == gguf.GGMLQuantizationType.F32:
            assert got.scales is None and np.array_equal(got.rows, want), path
        else:
            same = TokenTable.quantized(want)
            assert np.array_equal(got.rows, same.rows) and np.array_equal(got.scales, same.scales), path
    with pytest.raises(BundleError, match="has no blk.99.attn_q.weight tensor"):
        read_tensor(q8, "blk.99.attn_q.weight")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(q8.read_bytes()[:2000])
    with pytest.raises(BundleError, match="the GGUF header ends early|runs past the end of the file"):
        gguf_token_table(cut, *want.shape)
    (tmp_path / "not.gguf").write_bytes(b"GGML" + bytes(100))
    with pytest.raises(BundleError, match="is not a GGUF file"):
        read_tensor(tmp_path / "not.gguf", "token_embd.weight")

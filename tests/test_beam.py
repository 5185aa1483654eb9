"""CTC-guided beam search: against exhaustive search on a toy model, hypotheses in llama.cpp's KV sequences
against one-by-one decoding, the bundle against the PyTorch reference, settings and the CLI flag."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from falcon_audio_edge.errors import ConfigError
from falcon_audio_edge.runtime.beam import beam_search
from falcon_audio_edge.runtime.ctc import CTCPrefixScorer, log_softmax
from falcon_audio_edge.settings import MAX_BEAM_SIZE, TRANSCRIBE_PROMPT, GenerationSettings
from tests.conftest import decoding_file, fa_edge
from tests.test_ctc import random_log_probs

END = 0  # the toy vocabulary: 0 ends the turn, 1 and 2 are words


class ToyLM:
    """Next-token logits that depend on the whole prefix (random, fixed by the prefix), behind the beam API."""

    def __init__(self, seed: int):
        self.seed, self.hypotheses, self.calls = seed, [()], 0

    def logits(self, prefix: tuple[int, ...]) -> np.ndarray:
        return np.random.default_rng([self.seed, len(prefix), *prefix]).normal(size=3) * 2.0

    def beams_begin(self) -> None:
        self.hypotheses = [()]

    def beams_step(self, parents: list[int], tokens: list[int]) -> np.ndarray:
        self.calls += 1
        self.hypotheses = [self.hypotheses[p] + (t,) for p, t in zip(parents, tokens, strict=True)]
        return np.stack([self.logits(h) for h in self.hypotheses])

    def beams_end(self, tokens: list[int]) -> None:
        self.chosen = list(tokens)


def exhaustive_best(lm: ToyLM, ctc: np.ndarray, weight: float, max_len: int) -> tuple[tuple[int, ...], float]:
    """The ended sequence (of words 1, 2) with the best combined score, by scoring every one."""

    def ended_logp(model: ToyLM, words: tuple[int, ...]) -> float:
        return sum(log_softmax(model.logits(words[:i]))[w] for i, w in enumerate((*words, END)))

    best, best_score = (), -np.inf
    for n in range(max_len + 1):
        for words in itertools.product((1, 2), repeat=n):
            scorer = CTCPrefixScorer(ctc, END)
            for w in words:
                scorer.scores(np.array([w]))
                scorer.advance(w)
            score = (1 - weight) * ended_logp(lm, words) + weight * scorer.full
            if score > best_score:
                best, best_score = words, score
    return best, best_score


@pytest.mark.parametrize("seed", range(6))
def test_a_wide_beam_finds_the_exhaustive_best_and_greedy_is_no_better(seed):
    # 2 words, at most 3 of them: 8 hypotheses hold every prefix, so the search is exhaustive
    rng = np.random.default_rng(seed)
    ctc = random_log_probs(rng, frames=5, vocab=3)  # columns: blank, END (never emitted: CTC ends by itself), 1, 2
    lm = ToyLM(seed)
    gen = GenerationSettings(max_tokens=4, ctc_weight=0.5, beam_size=8, ctc_candidates=2)
    want, want_score = exhaustive_best(lm, ctc, 0.5, max_len=3)
    got = beam_search(lm, lm.logits(()), CTCPrefixScorer(ctc, END), gen, END)
    assert got.ended and tuple(got.tokens) == want and lm.chosen == list(want)
    assert got.score == pytest.approx(want_score)
    greedy = beam_search(lm, lm.logits(()), CTCPrefixScorer(ctc, END), GenerationSettings(
        max_tokens=4, ctc_weight=0.5, beam_size=1, ctc_candidates=2), END)  # fmt: skip
    assert greedy.score <= got.score + 1e-9


def test_beam_search_beats_greedy_somewhere():
    """Over a few toy problems a width-8 search finds a better sequence than width 1 at least once (else the
    test above could pass with two greedy searches)."""
    better = 0
    for seed in range(6):
        ctc = random_log_probs(np.random.default_rng(seed), frames=5, vocab=3)
        scores = []
        for width in (1, 8):
            lm = ToyLM(seed)
            gen = GenerationSettings(max_tokens=4, ctc_weight=0.5, beam_size=width, ctc_candidates=2)
            scores.append(beam_search(lm, lm.logits(()), CTCPrefixScorer(ctc, END), gen, END).score)
        better += scores[1] > scores[0] + 1e-6
    assert better >= 1


@pytest.mark.parametrize("width", [2, 4, MAX_BEAM_SIZE])
def test_hypotheses_in_kv_sequences_score_as_decoded_one_by_one(ctc_bundle, clips, width):
    from falcon_audio_edge.runtime.backend import open_bundle
    from falcon_audio_edge.runtime.engine import Timings

    gen = GenerationSettings(max_tokens=12, ctc_weight=0.5, beam_size=width)
    with open_bundle(ctc_bundle[1]) as chat:
        end = next(iter(chat.stop_ids))
        _, _, embeds = chat.prefill(clips["q1"], TRANSCRIBE_PROMPT, Timings())
        n_prompt = chat.backend.n_past
        posteriors = chat.backend.ctc_posteriors(embeds)
        best = beam_search(chat.backend, chat.backend.logits(), CTCPrefixScorer(posteriors, end), gen, end)
        assert best.tokens and chat.backend.n_past == n_prompt + len(best.tokens)  # the conversation holds it
        after = chat.backend.logits()  # its tokens reach the decoder when the conversation goes on
        # the same tokens, fed one at a time into a fresh conversation
        chat.reset()
        chat.prefill(clips["q1"], TRANSCRIBE_PROMPT, Timings())
        scorer, llm = CTCPrefixScorer(posteriors, end), 0.0
        for token in best.tokens:
            llm += log_softmax(chat.backend.logits())[token]
            scorer.scores(np.array([token]))
            scorer.advance(token)
            chat.backend.feed_tokens([token])
        ctc = scorer.full if best.ended else scorer.score
        assert np.allclose(chat.backend.logits(), after, atol=1e-4)
        llm += log_softmax(chat.backend.logits())[end] if best.ended else 0.0
    assert best.llm == pytest.approx(llm, abs=1e-3) and best.ctc == pytest.approx(ctc, abs=1e-3)


def test_bundle_and_pytorch_reference_search_alike_over_two_turns(ctc_bundle, clips):
    from falcon_audio_edge.reference import open_checkpoint
    from falcon_audio_edge.runtime.backend import open_bundle

    plain = GenerationSettings(max_tokens=8, ctc_weight=0.5, beam_size=4, ctc_proposal_prob=0.0)
    proposing = GenerationSettings(max_tokens=8, ctc_weight=0.5, beam_size=4, ctc_proposal_prob=0.01)
    with open_bundle(ctc_bundle[1]) as chat, open_checkpoint(ctc_bundle[0]) as ref:
        for clip, gen in (("q0", plain), ("q2", plain), ("q1", proposing)):
            got = chat.ask(clips[clip], TRANSCRIBE_PROMPT, gen).run()
            want = ref.ask(clips[clip], TRANSCRIBE_PROMPT, gen).run()  # replays each hypothesis
            assert got.tokens and got.tokens == want.tokens and got.stop_reason == want.stop_reason
            assert chat.backend.n_past == ref.backend.n_past


@pytest.mark.parametrize("size", [0, MAX_BEAM_SIZE + 1, 2.5, "4"])
def test_beam_size_is_validated(size):
    with pytest.raises(ConfigError, match=f"beam_size must be an integer from 1 to {MAX_BEAM_SIZE}"):
        GenerationSettings(beam_size=size)


def test_cli_beam_size(ctc_bundle, clips, tmp_path):
    from falcon_audio_edge.runtime.backend import open_bundle

    bundle, wav = str(ctc_bundle[1]), str(clips["q0"])
    got = {}
    for width in (1, 4):
        out = fa_edge("ask", bundle, "--audio", wav, "--transcribe", "--max-tokens", "8", "--decoding",
                      decoding_file(tmp_path, beam_size=width), "--json").stdout  # fmt: skip
        got[width] = json.loads(out)["tokens"]
    want = {}
    with open_bundle(bundle) as chat:
        for width in (1, 4):
            chat.reset()
            gen = GenerationSettings(max_tokens=8, ctc_weight=0.5, beam_size=width)
            want[width] = chat.ask(wav, TRANSCRIBE_PROMPT, gen).run().tokens
    assert got == want and got[1] != got[4]  # the flag reaches the search (which finds another transcript here)
    bad = fa_edge("ask", bundle, "--audio", wav, "--transcribe", "--decoding", decoding_file(tmp_path, beam_size=0),
                  check=False)  # fmt: skip
    assert bad.returncode == 2 and "beam_size must be an integer from 1 to" in bad.stderr


def test_cli_ctc_proposals(ctc_bundle, clips, tmp_path):
    from falcon_audio_edge.runtime.backend import open_bundle

    bundle, wav = str(ctc_bundle[1]), str(clips["q1"])
    got, want = {}, {}
    for prob in (0.0, 0.01):
        out = fa_edge("ask", bundle, "--audio", wav, "--transcribe", "--max-tokens", "8", "--decoding",
                      decoding_file(tmp_path, ctc_proposal_prob=prob), "--json").stdout  # fmt: skip
        got[prob] = json.loads(out)["tokens"]
    with open_bundle(bundle) as chat:
        for prob in (0.0, 0.01):
            chat.reset()
            gen = GenerationSettings(max_tokens=8, ctc_weight=0.5, ctc_proposal_prob=prob)
            want[prob] = chat.ask(wav, TRANSCRIBE_PROMPT, gen).run().tokens
    assert got == want and got[0.0] != got[0.01]  # the flag reaches the decoding (proposals change it here)
    bad = fa_edge("ask", bundle, "--audio", wav, "--transcribe", "--decoding",
                  decoding_file(tmp_path, ctc_proposal_prob=1), check=False)  # fmt: skip
    assert bad.returncode == 2 and "ctc_proposal_prob must be a number from 0 up to" in bad.stderr


def test_cli_ctc_candidates(ctc_bundle, clips, tmp_path):
    from falcon_audio_edge.runtime.backend import open_bundle

    bundle, wav = str(ctc_bundle[1]), str(clips["q1"])
    search = {"ctc_weight": 0.9, "ctc_proposal_prob": 0.0, "beam_size": 1}
    got, want = {}, {}
    for k in (1, 16):
        out = fa_edge("ask", bundle, "--audio", wav, "--transcribe", "--max-tokens", "8", "--decoding",
                      decoding_file(tmp_path, **search, ctc_candidates=k), "--json").stdout  # fmt: skip
        got[k] = json.loads(out)["tokens"]
    with open_bundle(bundle) as chat:
        for k in (1, 16):
            chat.reset()
            gen = GenerationSettings(max_tokens=8, ctc_weight=0.9, ctc_proposal_prob=0.0, beam_size=1, ctc_candidates=k)
            want[k] = chat.ask(wav, TRANSCRIBE_PROMPT, gen).run().tokens
    assert got == want and got[1] != got[16]  # the flag reaches the decoding
    none = decoding_file(tmp_path, ctc_candidates=0)
    bad = fa_edge("ask", bundle, "--audio", wav, "--transcribe", "--decoding", none, check=False)
    assert bad.returncode == 2 and "ctc_candidates must be an integer from 1 to 256" in bad.stderr


def test_a_bundle_carries_its_own_search_and_a_decoding_file_goes_over_it(ctc_bundle, clips, tmp_path):
    import shutil

    from falcon_audio_edge.export.bundle import export_bundle
    from falcon_audio_edge.quantize.bundle import quantize_bundle

    from falcon_audio_edge.errors import BundleError
    from falcon_audio_edge.runtime.backend import open_bundle
    from falcon_audio_edge.runtime.bundle import MANIFEST_FILE, read_bundle

    ckpt, plain = ctc_bundle
    own = {"beam_size": 1, "ctc_proposal_prob": 0.0}
    bundle = export_bundle(ckpt, tmp_path / "own", decoder_type="f32", verify=False, decoding=own)
    assert read_bundle(bundle).decoding.beam_size == 1
    small = quantize_bundle(bundle, tmp_path / "q8", decoder="q8_0", verify=False)
    assert read_bundle(small).manifest["decoding"] == own  # quantizing keeps it
    wav = str(clips["q1"])
    wider = decoding_file(tmp_path, beam_size=4)
    got = {name: json.loads(fa_edge("ask", bundle, "--audio", wav, "--transcribe", "--max-tokens", "8", *extra,
                                    "--json").stdout)["tokens"]
           for name, extra in (("own", []), ("file", ["--decoding", wider]))}  # fmt: skip
    want = {}
    with open_bundle(plain) as chat:  # the same weights without a search of their own
        for name, width in (("own", 1), ("file", 4)):
            chat.reset()
            gen = GenerationSettings(max_tokens=8, ctc_weight=0.5, ctc_proposal_prob=0.0, beam_size=width)
            want[name] = chat.ask(wav, TRANSCRIBE_PROMPT, gen).run().tokens
        chat.reset()
        default = chat.ask(wav, TRANSCRIBE_PROMPT, GenerationSettings(max_tokens=8, ctc_weight=0.5)).run().tokens
    assert got == want and default != want["own"]  # the bundle's own search decided its transcript
    with open_bundle(bundle) as chat:  # the library's listen-first transcription takes it too
        assert chat.listening_for(GenerationSettings(**chat.decoding.search())).beam_size == 1
    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    manifest = json.loads((broken / MANIFEST_FILE).read_text())
    (broken / MANIFEST_FILE).write_text(json.dumps({**manifest, "decoding": {"beam_size": 0}}))
    with pytest.raises(BundleError, match=r"manifest.json: beam_size must be an integer from 1 to 16, got 0"):
        read_bundle(broken)
    with pytest.raises(ConfigError, match=r"decoding: unknown decoding settings \['beams'\]"):
        export_bundle(ckpt, tmp_path / "never", decoder_type="f32", verify=False, decoding={"beams": 2})
    assert not (tmp_path / "never").exists()

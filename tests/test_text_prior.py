"""Shallow fusion: the bundle's text LLM (answer.gguf) scoring the hypotheses of a CTC-guided transcription.

Against exhaustive search on a toy model, the prior's KV sequences against one-by-one decoding of the text LLM,
the defaults, and the bad settings a user can give."""

from __future__ import annotations

import json

import numpy as np
import pytest

from falcon_audio_edge.errors import ConfigError, FaEdgeError
from falcon_audio_edge.runtime.beam import beam_search
from falcon_audio_edge.runtime.ctc import CTCPrefixScorer, log_softmax
from falcon_audio_edge.settings import DEFAULT_LM_WEIGHT, TRANSCRIBE_PROMPT, GenerationSettings, lm_weight_for
from tests.conftest import fa_edge
from tests.test_beam import END, ToyLM, exhaustive_best
from tests.test_ctc import random_log_probs


class ToyPrior(ToyLM):
    """A text prior of the toy vocabulary: next-token logits fixed by the prefix, its own seed."""

    def begin(self) -> np.ndarray:
        self.hypotheses = [()]
        return self.logits(())


@pytest.mark.parametrize("seed", range(6))
def test_a_wide_fused_beam_finds_the_exhaustive_best(seed):
    ctc = random_log_probs(np.random.default_rng(seed), frames=5, vocab=3)
    lm, prior = ToyLM(seed), ToyPrior(100 + seed)
    gen = GenerationSettings(max_tokens=4, ctc_weight=0.5, beam_size=8, ctc_candidates=2, lm_weight=0.7)
    want, want_score = exhaustive_best(lm, ctc, 0.5, max_len=3, prior=prior, lm_weight=0.7)
    got = beam_search(lm, lm.logits(()), CTCPrefixScorer(ctc, END), gen, END, prior)
    assert got.ended and tuple(got.tokens) == want and lm.chosen == list(want)
    assert got.score == pytest.approx(want_score)
    assert prior.chosen == []  # the prior's hypotheses are dropped: its context only ever held the prefix


def test_the_prior_changes_the_best_transcript_somewhere_and_weight_zero_ignores_it():
    changed = 0
    for seed in range(6):
        ctc = random_log_probs(np.random.default_rng(seed), frames=5, vocab=3)
        lm = ToyLM(seed)
        found = []
        for weight in (0.0, 0.9):
            gen = GenerationSettings(max_tokens=4, ctc_weight=0.5, beam_size=8, ctc_candidates=2, lm_weight=weight)
            found.append(beam_search(lm, lm.logits(()), CTCPrefixScorer(ctc, END), gen, END, ToyPrior(100 + seed)))
        assert tuple(found[0].tokens) == exhaustive_best(lm, ctc, 0.5, max_len=3)[0]  # weight 0: no prior at all
        changed += found[0].tokens != found[1].tokens
    assert changed >= 1


def test_a_weight_without_a_prior_is_an_error():
    ctc = random_log_probs(np.random.default_rng(0), frames=5, vocab=3)
    lm = ToyLM(0)
    gen = GenerationSettings(max_tokens=4, ctc_weight=0.5, beam_size=2, ctc_candidates=2, lm_weight=0.3)
    with pytest.raises(ValueError, match="lm_weight=0.3 needs a text prior"):
        beam_search(lm, lm.logits(()), CTCPrefixScorer(ctc, END), gen, END)


@pytest.mark.parametrize("value", [-0.1, 1.0, "0.3"])
def test_lm_weight_is_validated(value):
    with pytest.raises(ConfigError, match="lm_weight must be a number from 0 up to"):
        GenerationSettings(lm_weight=value)
    with pytest.raises(ConfigError, match="lm_weight=0.3 rescores greedy decoding"):
        GenerationSettings(lm_weight=0.3, temperature=0.7)


def test_the_default_weight_needs_guidance_and_a_text_llm():
    assert lm_weight_for(True, True) == DEFAULT_LM_WEIGHT > 0
    assert lm_weight_for(False, True) == lm_weight_for(True, False) == 0.0
    assert lm_weight_for(True, True, 0.0) == 0.0 and lm_weight_for(False, False, 0.2) == 0.2


@pytest.fixture(scope="module")
def prior_bundle(ctc_bundle, bundle_f32, tmp_path_factory):
    """The CTC tiny model with a text LLM of the same vocabulary (the f32 bundle's decoder) as answer.gguf."""
    from falcon_audio_edge.export.bundle import export_bundle

    out = tmp_path_factory.mktemp("prior") / "bundle"
    return export_bundle(ctc_bundle[0], out, decoder_type="f32", answer_llm=bundle_f32 / "decoder.gguf", verify=False)


def test_the_priors_kv_sequences_score_as_the_text_llm_decoded_one_by_one(prior_bundle, clips):
    from falcon_audio_edge.runtime.backend import TextBackend, open_bundle
    from falcon_audio_edge.runtime.bundle import read_bundle
    from falcon_audio_edge.runtime.engine import Timings
    from falcon_audio_edge.settings import RuntimeSettings

    gen = GenerationSettings(max_tokens=10, ctc_weight=0.5, beam_size=4, lm_weight=0.5)
    with open_bundle(prior_bundle) as chat:
        end = next(iter(chat.stop_ids))
        _, _, embeds = chat.prefill(clips["q1"], TRANSCRIBE_PROMPT, Timings())
        scorer = CTCPrefixScorer(chat.backend.ctc_posteriors(embeds), end)
        best = beam_search(chat.backend, chat.backend.logits(), scorer, gen, end, chat.text_prior())
        prefix, user = chat.text_prior().prefix, chat.backend.tokenize(chat.layout.user_start)
    assert best.tokens and prefix[len(prefix) - len(user) :] == user  # the start of a user's message (BOS first?)
    text = TextBackend(read_bundle(prior_bundle).answer_path, RuntimeSettings())
    try:
        text.feed_tokens(prefix)
        want = 0.0
        for token in best.tokens + ([end] if best.ended else []):
            want += log_softmax(text.logits())[token]
            text.feed_tokens([token])
    finally:
        text.close()
    assert best.prior == pytest.approx(want, abs=1e-3)


def test_a_fused_transcription_leaves_the_answer_models_conversation_alone(prior_bundle, clips):
    from falcon_audio_edge.runtime.backend import open_bundle

    with open_bundle(prior_bundle) as chat:
        chat.ask(clips["q0"], None, GenerationSettings(max_tokens=4), listen_first=True).run()
        answer_past = chat.answerer().backend.n_past
        heard = {}
        for weight in (0.0, 0.9):
            chat.reset_listening()
            gen = GenerationSettings(max_tokens=12, ctc_weight=0.5, beam_size=1, lm_weight=weight)
            heard[weight] = chat.ask(clips["q1"], TRANSCRIBE_PROMPT, gen).run().tokens
        assert chat.answerer().backend.n_past == answer_past
    assert heard[0.0] != heard[0.9]  # the weight reaches the decoding, even with one hypothesis


def test_listen_first_transcribes_with_the_default_weight(prior_bundle, clips):
    from falcon_audio_edge.runtime.backend import open_bundle
    from falcon_audio_edge.runtime.engine import LISTEN_MAX_TOKENS

    with open_bundle(prior_bundle) as chat:
        turn = chat.ask(clips["q1"], None, GenerationSettings(max_tokens=4), listen_first=True).run()
        chat.reset()
        alone = GenerationSettings(max_tokens=LISTEN_MAX_TOKENS, ctc_weight=0.5, lm_weight=DEFAULT_LM_WEIGHT)
        assert turn.transcript == chat.ask(clips["q1"], TRANSCRIBE_PROMPT, alone).run().text.strip()


def test_a_weight_the_model_cannot_use_is_refused(prior_bundle, ctc_bundle, clips):
    from falcon_audio_edge.runtime.backend import open_bundle

    with open_bundle(ctc_bundle[1]) as chat, pytest.raises(FaEdgeError, match="needs a bundle with a text LLM"):
        chat.ask(clips["q0"], TRANSCRIBE_PROMPT, GenerationSettings(ctc_weight=0.5, lm_weight=0.3))
    with open_bundle(prior_bundle) as chat, pytest.raises(FaEdgeError, match="it needs ctc_weight or char_weight"):
        chat.ask(clips["q0"], TRANSCRIBE_PROMPT, GenerationSettings(lm_weight=0.3))


# a narrower search than the default: on the tiny random model the default's finds the same tokens with and without
# the prior on these clips, and these tests are about the weights reaching the search
NARROW = dict(beam_size=8, ctc_candidates=16)
NARROW_FLAGS = ["--beam-size", "8", "--ctc-candidates", "16"]


def test_cli_lm_weight(prior_bundle, ctc_bundle, clips):
    from falcon_audio_edge.runtime.backend import open_bundle

    wav = str(clips["q1"])
    got = {}
    for flag in ([], ["--lm-weight", "0"], ["--lm-weight", "0.9"]):
        out = fa_edge("ask", str(prior_bundle), "--audio", wav, "--transcribe", "--max-tokens", "12", *NARROW_FLAGS,
                      *flag, "--json")  # fmt: skip
        got[" ".join(flag)] = json.loads(out.stdout)["tokens"]
    with open_bundle(prior_bundle) as chat:
        gen = GenerationSettings(max_tokens=12, ctc_weight=0.5, lm_weight=DEFAULT_LM_WEIGHT, **NARROW)
        assert got[""] == chat.ask(wav, TRANSCRIBE_PROMPT, gen).run().tokens  # the default where there is a text LLM
    assert got["--lm-weight 0"] != got["--lm-weight 0.9"]
    bad = fa_edge("ask", str(ctc_bundle[1]), "--audio", wav, "--transcribe", "--lm-weight", "0.3", check=False)
    assert bad.returncode == 2 and "needs a bundle with a text LLM" in bad.stderr
    bad = fa_edge("ask", str(prior_bundle), "--audio", wav, "--transcribe", "--lm-weight", "1.5", check=False)
    assert bad.returncode == 2 and "lm_weight must be a number from 0 up to" in bad.stderr


def test_quality_report_measures_the_default_with_and_without_the_text_llm(prior_bundle, clips, tmp_path):
    from falcon_audio_edge.train.quality import evaluate, markdown

    from falcon_audio_edge.runtime.backend import open_bundle
    from falcon_audio_edge.verify import word_error_rate
    from tests.conftest import QUESTIONS

    row = {"voice": "en-us", "task": "transcribe", "text": QUESTIONS[1], "audio": str(clips["q1"]), "target": "x"}
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text(json.dumps(row) + "\n")
    result = evaluate(prior_bundle, heldout, None, max_tokens=8)
    assert result["lm_weight"] == DEFAULT_LM_WEIGHT and result["ctc_weight"] == 0.5
    with open_bundle(prior_bundle) as chat:
        gen = GenerationSettings(max_tokens=8, ctc_weight=0.5)
        unfused = chat.ask(clips["q1"], TRANSCRIBE_PROMPT, gen).run().text
    assert result["wer_without_lm"] == pytest.approx(word_error_rate([QUESTIONS[1]], [unfused]))
    report = markdown(result, "cmd")
    assert f", text LLM {DEFAULT_LM_WEIGHT}: the default) | {result['wer']:.3f} |" in report
    assert f"without the text LLM: `--lm-weight 0`) | {result['wer_without_lm']:.3f} |" in report


def test_listening_settings_name_what_is_asked_and_a_zero_turns_it_off(prior_bundle, ctc_bundle):
    from falcon_audio_edge.runtime.backend import open_bundle
    from falcon_audio_edge.runtime.engine import LISTEN_MAX_TOKENS

    gen = GenerationSettings(max_tokens=4, beam_size=2, ctc_proposal_prob=0.05)
    with open_bundle(prior_bundle) as chat:
        default = chat.listening_for(gen)
        assert (default.ctc_weight, default.char_weight, default.lm_weight) == (0.5, 0.0, DEFAULT_LM_WEIGHT)
        assert (default.max_tokens, default.beam_size, default.ctc_proposal_prob) == (LISTEN_MAX_TOKENS, 2, 0.05)
        assert chat.listening_for(gen, lm=0.0).lm_weight == 0.0 and chat.listening_for(gen, lm=0.0).ctc_weight == 0.5
        off = chat.listening_for(gen, ctc=0.0)
        assert (off.ctc_weight, off.char_weight, off.lm_weight) == (0.0, 0.0, 0.0)  # no guidance: no prior either
        assert chat.listening_for(gen, ctc=0.3, lm=0.2).ctc_weight == 0.3
        assert chat.listening_for(replace_weights(gen, 0.3, 0.0)).ctc_weight == 0.3  # the API's generation stands
        with pytest.raises(FaEdgeError, match="listening settings are for a listen-first turn"):
            chat.ask(None, "Hello", gen, listening=default)
    with open_bundle(ctc_bundle[1]) as chat:  # no text LLM: no prior by default
        assert chat.listening_for(gen).lm_weight == 0.0


def replace_weights(gen: GenerationSettings, ctc: float, lm: float) -> GenerationSettings:
    from dataclasses import replace

    return replace(gen, ctc_weight=ctc, lm_weight=lm)


@pytest.mark.parametrize(
    "flag, weights",
    [
        (["--lm-weight", "0"], dict(ctc_weight=0.5)),
        (["--ctc-weight", "0"], {}),  # no guidance: no prior either
        (["--lm-weight", "0.9", "--beam-size", "1"], dict(ctc_weight=0.5, lm_weight=0.9, beam_size=1)),
    ],
)
def test_cli_listen_first_transcribes_with_the_weights_given_zero_included(prior_bundle, clips, flag, weights):
    from falcon_audio_edge.runtime.backend import open_bundle
    from falcon_audio_edge.runtime.engine import LISTEN_MAX_TOKENS

    wav = str(clips["q1"])
    out = fa_edge("ask", str(prior_bundle), "--audio", wav, "--listen-first", "--max-tokens", "4", *NARROW_FLAGS, *flag,
                  "--json")  # fmt: skip
    with open_bundle(prior_bundle) as chat:
        asked = GenerationSettings(max_tokens=LISTEN_MAX_TOKENS, **{**NARROW, **weights})
        want = chat.ask(wav, TRANSCRIBE_PROMPT, asked).run()
        chat.reset()
        default = GenerationSettings(
            max_tokens=LISTEN_MAX_TOKENS, ctc_weight=0.5, lm_weight=DEFAULT_LM_WEIGHT, **NARROW
        )
        assert want.text != chat.ask(wav, TRANSCRIBE_PROMPT, default).run().text  # the flag changes what is heard
    assert json.loads(out.stdout)["transcript"] == want.text.strip()

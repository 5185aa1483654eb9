"""Encoder windows under 30 s (dims.audio.window_ms): each window heard on its own in training and at run time, and
fed into the decoder while the person speaks (AudioChat.start_audio)."""

from __future__ import annotations

import numpy as np
import pytest

from falcon_audio_edge.audio import SAMPLE_RATE, load_audio
from falcon_audio_edge.config import preset_dims
from falcon_audio_edge.errors import ConfigError
from falcon_audio_edge.frontend import audio_features
from falcon_audio_edge.runtime.backend import open_bundle
from falcon_audio_edge.settings import GenerationSettings
from tests.conftest import fa_edge

WINDOW_MS = 1000
GREEDY = GenerationSettings(max_tokens=12, ignore_end_of_turn=True)


@pytest.fixture(scope="module")
def windowed(workdir):
    """A tiny model heard in 1 s windows, and its f32 bundle."""
    from falcon_audio_edge.export.bundle import export_bundle

    from falcon_audio_edge.checkpoint import init_checkpoint

    ckpt = init_checkpoint("tiny", workdir / "ckpt-win1s", seed=2, pool_factor=4, window_ms=WINDOW_MS)
    return ckpt, export_bundle(ckpt, workdir / "bundle-win1s", decoder_type="f32")


@pytest.mark.parametrize(
    ("audio", "message"),
    [
        ({"window_ms": 100}, "window_ms must be a whole number of 20 ms encoder frames from 500 to 30000, got 100"),
        ({"window_ms": 1010}, "got 1010"),
        ({"window_ms": 40000}, "got 40000"),
        ({"window_ms": 2000.0}, "got 2000.0"),
        ({"window_ms": 2000, "pad_to_30s": True}, "does not go with audio.window_ms=2000"),
    ],
)
def test_a_window_setting_out_of_range_is_refused_naming_it(audio, message):
    with pytest.raises(ConfigError, match=message):
        preset_dims("tiny", **audio)


def test_init_refuses_a_bad_window_and_writes_nothing(tmp_path):
    out = tmp_path / "ckpt"
    result = fa_edge("init", "--preset", "tiny", "--window-ms", "300", "-o", str(out), check=False)
    assert result.returncode != 0 and "audio.window_ms" in result.stderr and not out.exists()


def test_windows_cut_the_clip_and_each_is_heard_alone(windowed, clips):
    """A 7 s clip in 1 s windows: 7 windows of 13 audio tokens (50 encoder frames, 4 to a token, the last padded);
    the training side's embeddings (TrainingStep.audio) equal the reference's per-window encoding, the runtime's."""
    import torch
    from falcon_audio_edge.train.data import Example
    from falcon_audio_edge.train.trainer import TrainingStep

    from falcon_audio_edge.checkpoint import load_checkpoint
    from falcon_audio_edge.frontend import encode_features
    from falcon_audio_edge.reference import open_checkpoint

    ckpt_path, _ = windowed
    samples = load_audio(clips["7s"]).samples
    features = audio_features(samples, preset_dims("tiny", pool_factor=4, window_ms=WINDOW_MS))
    assert features.windows == int(np.ceil(len(samples) / SAMPLE_RATE))
    assert features.tokens[0] == 13 and features.n_tokens <= 13 * features.windows
    ckpt = load_checkpoint(ckpt_path)
    ex = Example(tuple(features.mels), tuple(features.tokens), None, "x", "", "clip")
    with torch.no_grad():
        trained = TrainingStep(ckpt.model, ckpt.tokenizer, frozen_encoder=True).eval().audio(ex).numpy()
    with open_checkpoint(ckpt_path) as ref:
        runtime = encode_features(features, ref.backend.encode)
    assert trained.shape == runtime.shape == (features.n_tokens, ckpt.dims.decoder.hidden)
    np.testing.assert_allclose(trained, runtime, atol=1e-4)


def test_ask_says_the_model_s_windows(windowed, clips):
    import json

    out = json.loads(fa_edge("ask", windowed[1], "--audio", clips["q0"], "--max-tokens", "2", "--json").stdout)
    assert out["split_into_windows"] is True and f"windows of up to {WINDOW_MS / 1000:g} s" in out["note"]


def test_a_windowed_bundle_matches_its_reference(windowed, clips):
    from falcon_audio_edge.reference import open_checkpoint

    ckpt, bundle = windowed
    with open_bundle(bundle) as chat, open_checkpoint(ckpt) as ref:
        got = chat.ask(clips["7s"], None, GREEDY).run()
        want = ref.ask(clips["7s"], None, GREEDY).run()
    assert got.audio_tokens == want.audio_tokens and got.windows == want.windows == 7
    assert got.tokens == want.tokens


def test_windows_fed_while_the_person_speaks_give_the_tokens_of_the_whole_clip(windowed, clips):
    """start_audio: each window the utterance surely runs past (0.7 s of slack) goes into the decoder during
    speech; the turn feeds only the rest, with the same tokens as the whole clip given at once, for the utterance
    streamed, for one that ends sooner than the audio added (its later windows taken back), and for another prompt.
    cancel_turn takes it all back."""
    _, bundle = windowed
    samples = load_audio(clips["7s"]).samples
    short = samples[: int(2.5 * SAMPLE_RATE)]
    with open_bundle(bundle) as chat:
        want = {}
        for name, clip, prompt in (("whole", samples, None), ("short", short, None), ("asked", samples, "Why?")):
            chat.reset()
            want[name] = chat.ask(clip, prompt, GREEDY).run().tokens
        for name, clip, prompt in (("whole", samples, None), ("short", short, None), ("asked", samples, "Why?")):
            chat.reset()
            stream = chat.start_audio(None, slack_s=0.7)
            opening = chat.backend.n_past
            for i in range(0, len(samples), 512):
                stream.add(samples[i : i + 512])
            stream.wait()  # the worker done: the windows 0.7 s short of the end are in the cache
            assert stream.queued == int((len(samples) / SAMPLE_RATE - 0.7) // (WINDOW_MS / 1000))
            assert chat.backend.n_past == opening + 13 * stream.queued
            got = chat.ask(clip, prompt, GREEDY).run()
            assert got.tokens == want[name], name
        chat.reset()
        stream = chat.start_audio(None)
        stream.add(samples)
        chat.cancel_turn()
        assert chat.backend.n_past == 0


def test_a_speculation_at_a_pause_feeds_the_rest_and_gives_the_tokens_of_the_whole_clip(windowed, clips):
    """At a pause the stream feeds the rest of the utterance as it will be and the text after it: where the guess
    holds, the cache holds the whole turn before the endpoint and the turn feeds nothing more; speech that resumes
    takes it back, and a wrong guess is taken back at the turn. The tokens are the whole clip's every time."""
    _, bundle = windowed
    samples = load_audio(clips["7s"]).samples
    pause = int(3.1 * SAMPLE_RATE)
    with open_bundle(bundle) as chat:
        want = chat.ask(samples, None, GREEDY).run()
        for name, guesses in (("right", [len(samples)]), ("resumed", [pause, len(samples)]), ("wrong", [pause])):
            chat.reset()
            stream = chat.start_audio(None, slack_s=0.7)
            opening = chat.backend.n_past
            for i in range(0, len(samples), 512):
                stream.add(samples[i : i + 512])
                if i < pause <= i + 512 and len(guesses) > 1:  # a pause, then speech again
                    stream.speculate(samples[:pause])
                    stream.wait()
                    assert chat.backend.n_past > opening + 13 * stream.queued  # the guess's rest and text fed
                    stream.unspeculate()
            stream.speculate(samples[: guesses[-1]])
            stream.wait()
            if name == "right":  # the whole turn is in the cache before the endpoint
                assert chat.backend.n_past == want.audio_tokens + want.prompt_tokens
            feeds = Counting(chat.backend, "feed_embeddings")
            got = chat.ask(samples, None, GREEDY).run()
            feeds.undo()
            assert got.tokens == want.tokens, name
            assert (feeds.calls == 0) == (guesses[-1] == len(samples)), name  # nothing more fed where the guess held


class Counting:
    """Counts the calls of ``obj.name`` until ``undo``."""

    def __init__(self, obj, name: str):
        self.obj, self.name, self.calls, real = obj, name, 0, getattr(obj, name)

        def counted(*args):
            self.calls += 1
            return real(*args)

        setattr(obj, name, counted)

    def undo(self) -> None:
        delattr(self.obj, self.name)


def test_a_turn_that_fails_after_its_windows_were_fed_is_taken_back_whole(windowed, clips):
    """The rest of the utterance cannot be encoded: the turn's opening and its windows fed during speech leave the
    cache, a closed stream feeds nothing more, and the next turn answers as on a fresh conversation."""
    from falcon_audio_edge.errors import FaEdgeError

    _, bundle = windowed
    samples = load_audio(clips["7s"]).samples
    with open_bundle(bundle) as chat:
        want = chat.ask(samples, None, GREEDY).run().tokens
        chat.reset()
        stream = chat.start_audio(None, slack_s=0.7)
        stream.add(samples)
        stream.wait()
        assert chat.backend.n_past > 13

        def broken(mel):
            raise FaEdgeError("the encoder failed")

        encode, chat.backend.encode = chat.backend.encode, broken
        with pytest.raises(FaEdgeError, match="the encoder failed"):
            chat.ask(samples, None, GREEDY).run()
        chat.backend.encode = encode
        assert chat.backend.n_past == 0
        stream.add(samples)  # too late: the turn took it
        assert stream._worker is None and chat.backend.n_past == 0
        assert chat.ask(samples, None, GREEDY).run().tokens == want

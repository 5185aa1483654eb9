"""Listen-first turns: the model transcribes, the bundle's answer model (answer.gguf) answers the transcript."""

from __future__ import annotations

import json

import pytest

from falcon_audio_edge.audio import SAMPLE_RATE
from falcon_audio_edge.errors import BundleError, ExportError, FaEdgeError
from falcon_audio_edge.runtime.bundle import ANSWER_FILE, read_bundle
from falcon_audio_edge.settings import TRANSCRIBE_PROMPT, GenerationSettings, RuntimeSettings
from tests.conftest import fa_edge, smollm2_gguf


def test_listen_first_answers_the_transcript_with_the_answer_model(answer_bundle, clips):
    from falcon_audio_edge.runtime.backend import TextBackend, open_bundle
    from falcon_audio_edge.runtime.engine import AudioChat
    from falcon_audio_edge.runtime.listen import MAX_TOKENS_PER_SECOND, TOKENS_SLACK
    from falcon_audio_edge.runtime.listening import LISTEN_MAX_TOKENS

    bundle = read_bundle(answer_bundle)
    assert bundle.answer_path == answer_bundle / ANSWER_FILE and ANSWER_FILE in bundle.manifest["files"]
    gen = GenerationSettings(max_tokens=8)
    with open_bundle(answer_bundle) as chat:
        first = chat.ask(clips["q0"], None, gen, listen_first=True).run()
        second = chat.ask(clips["q1"], None, gen, listen_first=True).run()
        assert chat.answerer().turns == 2  # the answer model keeps the conversation; the listener starts afresh
        chat.reset()
        cap = int(MAX_TOKENS_PER_SECOND * first.audio_seconds) + TOKENS_SLACK  # this model babbles up to the cap
        listen = GenerationSettings(max_tokens=min(LISTEN_MAX_TOKENS, cap))
        heard = chat.ask(clips["q0"], TRANSCRIBE_PROMPT, listen).run().text.strip()
    assert first.transcript == heard and second.transcript is not None
    assert first.audio_seconds > 1.0 and first.timings.listen_ms > 0
    with AudioChat(TextBackend(bundle.answer_path, RuntimeSettings()), bundle.dims) as text_only:
        assert text_only.ask(None, heard, gen).run().tokens == first.tokens  # the answer model's own answer


def test_listen_first_text_turns_and_nothing_heard(answer_bundle, clips, monkeypatch):
    from falcon_audio_edge.runtime.backend import open_bundle

    gen = GenerationSettings(max_tokens=4)
    with open_bundle(answer_bundle) as chat:
        typed = chat.ask(None, "Hello", gen, listen_first=True).run()  # no audio: the answer model's text turn
        assert typed.tokens and typed.transcript is None and chat.answerer().turns == 1
        real = chat.backend.logits
        stop = next(iter(chat.stop_ids))

        def only_the_end(*args):  # the listening model hears no words: its first token ends the turn
            logits = real(*args)
            logits[stop] = logits.max() + 10.0
            return logits

        monkeypatch.setattr(chat.backend, "logits", only_the_end)
        silent = chat.ask(clips["q0"], None, gen, listen_first=True).run()
        assert (silent.text, silent.transcript, silent.stop_reason) == ("", "", "nothing_heard")
        assert chat.answerer().turns == 1 and silent.audio_seconds > 1.0  # nothing asked of the answer model


def test_long_audio_is_heard_in_pieces_cut_at_pauses(answer_bundle, clips):
    from falcon_audio_edge.audio import load_audio, pause_segments
    from falcon_audio_edge.runtime.backend import open_bundle

    samples = load_audio(clips["45s"]).samples
    spans = pause_segments(samples)
    listen, gen = GenerationSettings(max_tokens=6), GenerationSettings(max_tokens=2)
    with open_bundle(answer_bundle) as chat:
        long = chat.ask(clips["45s"], None, gen, listen_first=True, listening=listen).run()
        short = chat.ask(clips["q0"], None, gen, listen_first=True, listening=listen).run()
        by_hand = []
        for start, end in spans:  # each piece a fresh transcription of its own
            chat.reset_listening()
            by_hand.append(chat.ask(samples[start:end], TRANSCRIBE_PROMPT, listen).run().text.strip())
    assert len(spans) >= 5 and long.pieces == len(spans) and short.pieces == 1
    assert long.transcript == " ".join(t for t in by_hand if t)
    assert 44.9 < long.audio_seconds < 45.1 and long.windows == len(spans)
    out = json.loads(fa_edge("ask", answer_bundle, "--audio", clips["45s"], "--max-tokens", "2", "--json").stdout)
    assert out["pieces"] == len(spans)
    assert f"heard in {len(spans)} phrases cut at pauses (each at most 10 s)" in out["note"]
    # this model babbles: each piece stops at 12 tokens a second of its audio (+ 16), not at LISTEN_MAX_TOKENS
    assert len(out["transcript"].split()) < 12 * 45 + 16 * len(spans)


def test_audio_heard_while_it_arrives_gives_the_transcript_of_the_whole(answer_bundle, clips):
    from falcon_audio_edge.audio import load_audio, pause_segments
    from falcon_audio_edge.runtime.backend import open_bundle

    samples = load_audio(clips["45s"]).samples
    utterance = samples[: len(samples) - 8000]  # the endpointer trims the last 0.5 s of what it was fed
    listen, gen = GenerationSettings(max_tokens=6), GenerationSettings(max_tokens=2)
    with open_bundle(answer_bundle) as chat:
        whole = chat.ask(utterance, None, gen, listen_first=True, listening=listen).run()
        hearing = chat.start_hearing(slack_s=0.7, listening=listen)
        for i in range(0, len(samples), 512):
            hearing.add(samples[i : i + 512])
        live = chat.ask(utterance, None, gen, listen_first=True, hearing=hearing).run()
        early = hearing.heard.early_pieces
        with pytest.raises(FaEdgeError, match="shorter than what was heard"):
            chat.ask(samples[:SAMPLE_RATE], None, gen, listen_first=True, hearing=hearing).run()
        with pytest.raises(FaEdgeError, match="listen_first=True"):
            chat.ask(samples, None, gen, hearing=hearing)
    assert early >= len(pause_segments(utterance)) - 2 and early >= 2  # all but the last one or two: during speech
    assert live.transcript == whole.transcript and live.pieces == whole.pieces == len(pause_segments(utterance))
    assert live.tokens == whole.tokens


def test_a_speculation_from_a_pause_gives_the_tokens_of_the_turn_heard_after_the_endpoint(answer_bundle, clips):
    from falcon_audio_edge.audio import load_audio
    from falcon_audio_edge.runtime.backend import open_bundle

    samples = load_audio(clips["7s"]).samples
    pause = int(3.1 * SAMPLE_RATE)  # where speech "stopped" for a moment, then went on
    listen, gen = GenerationSettings(max_tokens=6), GenerationSettings(max_tokens=3)
    with open_bundle(answer_bundle) as chat:
        whole = chat.ask(samples, None, gen, listen_first=True, listening=listen).run()
        runs = {}
        for name, guesses in (("resumed", [pause, len(samples)]), ("guessed wrong", [len(samples) - 8000])):
            chat.reset()  # each turn the first of its conversation, as the whole one was
            hearing = chat.start_hearing(slack_s=0.7, listening=listen)
            for i in range(0, len(samples), 512):
                block = samples[i : i + 512]
                hearing.add(block)
                if i < pause <= i + len(block) and len(guesses) > 1:  # the pause: a guess, then speech again
                    hearing.speculate(samples[:pause])
                    assert len(hearing._guess.future.result()) >= 1  # it heard a piece before speech went on
                    hearing.unspeculate()
            hearing.speculate(samples[: guesses[-1]])  # the last pause: right in the first run, not the second
            assert hearing._guess is not None
            if name == "resumed":  # the guess heard, the answer model holds the whole prompt before the endpoint
                hearing._guess.future.result()
                assert chat.answerer().backend.n_past == whole.prompt_tokens
            runs[name] = (chat.ask(samples, None, gen, listen_first=True, hearing=hearing).run(), hearing.heard)
    assert runs["resumed"][1].speculated and not runs["guessed wrong"][1].speculated
    for result, heard in runs.values():
        assert result.tokens == whole.tokens and result.transcript == whole.transcript
        assert result.pieces == whole.pieces == heard.pieces


class StopAfter:
    """A stop event that reads as set from its ``n``-th look on."""

    def __init__(self, n: int):
        self.n, self.looks = n, 0

    def is_set(self) -> bool:
        self.looks += 1
        return self.looks >= self.n


@pytest.mark.parametrize("search", ["beam", "greedy"])
def test_a_piece_no_longer_wanted_stops_at_its_next_token_and_the_model_hears_on(ctc_bundle, clips, search):
    from falcon_audio_edge.audio import load_audio
    from falcon_audio_edge.errors import Interrupted
    from falcon_audio_edge.runtime.backend import open_bundle

    samples = load_audio(clips["q1"]).samples
    gen = GenerationSettings(max_tokens=12, ignore_end_of_turn=True, beam_size=4 if search == "beam" else 1)
    with open_bundle(ctc_bundle[1]) as chat:
        gen = chat.with_weights(gen, TRANSCRIBE_PROMPT, 0.3, 0.0)
        want = chat.hear_piece(samples, gen, 512)
        assert len(want.tokens) > 3
        stop = StopAfter(3)
        with pytest.raises(Interrupted):
            chat.hear_piece(samples, gen, 512, stop)
        assert stop.looks == 3  # stopped at its third token, not run to its last
        assert chat.hear_piece(samples, gen, 512).tokens == want.tokens  # the next piece as if nothing happened


class SlowListener:
    """A stand-in for the listening model: each transcription waits until the test lets it go. It is its own answer
    model too, keeping what it is given to feed ahead (``fed``) and how often that is taken back."""

    def __init__(self):
        import threading

        self.go, self.threads, self.heard = threading.Event(), set(), 0
        self.fed: list[str] = []
        self.taken_back = 0

    def answerer(self):
        return self

    def start_text(self, text, whole=False):
        self.fed.append(text)

    def cancel_turn(self):
        self.taken_back += 1

    def piece_positions(self, seconds, gen):
        return 64

    def hear_piece(self, piece, gen, positions, stop=None):
        import threading
        from types import SimpleNamespace

        assert self.go.wait(10), "the test never let the transcription go"
        self.threads.add(threading.current_thread().name)
        self.heard += 1
        return SimpleNamespace(text=f"piece{self.heard}", audio_tokens=1, windows=1, timings=SimpleNamespace(
            mel_ms=0.0, encoder_ms=0.0))  # fmt: skip


def test_pieces_cut_during_speech_are_heard_on_a_worker_while_the_audio_loop_goes_on(clips):
    import threading

    from falcon_audio_edge.audio import load_audio, pause_segments
    from falcon_audio_edge.runtime.listen import Hearing

    samples = load_audio(clips["45s"]).samples
    listener = SlowListener()
    hearing = Hearing(listener, GenerationSettings(max_tokens=4))
    for i in range(0, len(samples), 512):
        hearing.add(samples[i : i + 512])  # returns although no transcription may finish yet
    assert listener.heard == 0
    listener.go.set()
    heard = hearing.finish(samples)
    spans = pause_segments(samples)
    assert heard.pieces == len(spans) and heard.transcript == " ".join(f"piece{k + 1}" for k in range(len(spans)))
    assert heard.early_pieces >= len(spans) - 2 and threading.current_thread().name in listener.threads
    assert any(name.startswith("fa-edge-hearing") for name in listener.threads)
    # each settled piece's transcript so far went to the answer model, and stays for the answer to go on from
    settled = heard.early_pieces
    assert listener.fed == [" ".join(f"piece{k + 1}" for k in range(n)) for n in range(1, settled + 1)]
    assert listener.taken_back == 0

    dropped = Hearing(SlowListener(), GenerationSettings(max_tokens=4))
    for i in range(0, len(samples), 512):
        dropped.add(samples[i : i + 512])
    assert len(dropped._queued) >= 2  # one being heard (waiting for go), the others queued behind it
    threading.Timer(0.2, dropped.chat.go.set).start()
    dropped.close()  # waits for the piece being heard; the queued ones are dropped
    assert dropped.chat.heard == 1
    assert dropped.chat.taken_back == 1  # what it fed to the answer model taken back with it

    from falcon_audio_edge.runtime.listen import listen_first_turn

    failing = SlowListener()  # a turn whose utterance turns out shorter than what was heard: an error, and the
    failing.go.set()  # transcript fed to the answer model is taken back with it
    late = Hearing(failing, GenerationSettings(max_tokens=4))
    for i in range(0, len(samples), 512):
        late.add(samples[i : i + 512])
    with pytest.raises(FaEdgeError, match="is shorter than what was heard"):
        list(listen_first_turn(failing, samples[: late.offset - 1], None, GenerationSettings(), late.listen, late))
    assert failing.fed and failing.taken_back == 1

    flaky = SlowListener()  # its first transcription fails: the whole utterance is heard afresh at the end
    flaky.go.set()
    real_hear = flaky.hear_piece

    def hear_piece(piece, gen, positions, stop=None):
        if not flaky.threads and not getattr(flaky, "failed", False):
            flaky.failed = True
            raise FaEdgeError("the listener failed once")
        return real_hear(piece, gen, positions, stop)

    flaky.hear_piece = hear_piece
    again = Hearing(flaky, GenerationSettings(max_tokens=4))
    for i in range(0, len(samples), 512):
        again.add(samples[i : i + 512])
    redone = again.finish(samples)
    assert redone.pieces == len(spans) and redone.early_pieces == 0
    assert flaky.heard >= len(spans) and len(redone.transcript.split()) == len(spans)


def test_a_piece_is_heard_once_its_end_is_found_and_that_work_is_taken_when_it_settles(clips):
    from falcon_audio_edge.audio import load_audio, pause_segments, piece_end
    from falcon_audio_edge.runtime.listen import Hearing

    samples = load_audio(clips["45s"]).samples
    spans = pause_segments(samples)
    listener = SlowListener()
    listener.go.set()
    hearing = Hearing(listener, GenerationSettings(max_tokens=4), slack_s=0.7)
    added = 0
    while piece_end(samples[:added], False) is None:  # until the first piece's end is found
        hearing.add(samples[added : added + 512])
        added += 512
    assert not hearing._queued, "the end may still move: the piece is not settled"
    assert list(hearing._early) == [spans[0][1]]
    hearing._early[spans[0][1]][0].result(timeout=10)
    assert listener.heard == 1  # heard before it settled
    for i in range(added, len(samples), 512):
        hearing.add(samples[i : i + 512])
    heard = hearing.finish(samples)
    assert heard.pieces == len(spans) and heard.transcript == " ".join(f"piece{k + 1}" for k in range(len(spans)))
    assert listener.heard == len(spans)  # each piece heard once: the early work taken, at the end too

    end = spans[0][1] + int(0.6 * SAMPLE_RATE)  # an utterance that ends sooner: too little after the pause to cut
    short = Hearing(SlowListener(), GenerationSettings(max_tokens=4), slack_s=0.7)
    short.chat.go.set()
    for i in range(0, spans[0][1] + SAMPLE_RATE + 1024, 512):
        short.add(samples[i : i + 512])
    assert spans[0][1] in short._early and not short._queued
    assert short.finish(samples[:end]).pieces == len(pause_segments(samples[:end])) == 1  # the early one dropped


def test_a_piece_is_heard_from_the_moment_its_pause_is_over_and_a_speculation_puts_its_rest_first(clips):
    from falcon_audio_edge.audio import cut_ahead, load_audio, pause_segments, piece_end
    from falcon_audio_edge.runtime.listen import Hearing

    samples = load_audio(clips["45s"]).samples
    cut = pause_segments(samples)[0][1]
    listener = SlowListener()
    hearing = Hearing(listener, GenerationSettings(max_tokens=4), slack_s=0.7)
    added = 0
    while cut_ahead(samples[:added]) is None:  # the words after the first pause begin
        hearing.add(samples[added : added + 512])
        added += 512
    assert piece_end(samples[:added], False) is None and added < cut + SAMPLE_RATE  # a second before it is found
    assert list(hearing._early) == [cut] and not hearing._queued  # heard now, not settled
    # a pause right after, where the utterance would end too soon after the cut to make it: the rest comes first
    _, stop = hearing._early[cut]
    hearing.speculate(samples[:added])
    assert not hearing._early and stop.is_set() and hearing._guess is not None  # stopped at its next token
    listener.go.set()
    hearing.unspeculate()  # speech again: the piece is found again and heard
    assert list(hearing._early) == [cut]
    done = hearing._early[cut][0]
    done.result(timeout=10)
    hearing.speculate(samples[:added])  # another pause there: a piece already heard is kept, not heard again
    assert hearing._early == {cut: (done, hearing._early[cut][1])} and not hearing._early[cut][1].is_set()
    hearing.unspeculate()
    assert hearing._early[cut][0] is done
    for i in range(added, len(samples), 512):
        hearing.add(samples[i : i + 512])
    heard = hearing.finish(samples)
    assert heard.pieces == len(pause_segments(samples)) == len(heard.transcript.split())


def test_listen_first_needs_an_answer_model(bundle_f32, clips):
    from falcon_audio_edge.runtime.backend import open_bundle

    with open_bundle(bundle_f32) as chat:
        with pytest.raises(FaEdgeError, match="listen-first needs a bundle with an answer model"):
            chat.ask(clips["q0"], None, GenerationSettings(max_tokens=4), listen_first=True).run()
        assert chat.backend.n_past == 0  # refused before any work
    proc = fa_edge("ask", bundle_f32, "--audio", clips["q0"], "--listen-first", check=False)
    assert proc.returncode == 2 and "error: listen-first needs a bundle with an answer model" in proc.stderr
    proc = fa_edge("ask", bundle_f32, "--audio", clips["q0"], "--listen-first", "--transcribe", check=False)
    assert proc.returncode == 2 and "--listen-first answers what it transcribed" in proc.stderr


def test_turns_that_answer_the_speech_listen_first_where_the_bundle_has_an_answer_model(answer_bundle, clips):
    from types import SimpleNamespace

    from falcon_audio_edge.cli_turn import listens_first

    answering, alone = SimpleNamespace(open_answerer=lambda: None), SimpleNamespace(open_answerer=None)
    assert listens_first(None, None, answering) and not listens_first(None, None, alone)
    assert not listens_first(None, "Describe the sound.", answering)  # an instruction: the model follows it
    assert not listens_first(None, TRANSCRIBE_PROMPT, answering)
    assert not listens_first(False, None, answering) and listens_first(True, None, alone)  # as asked
    ask = ("ask", answer_bundle, "--audio", clips["q0"], "--max-tokens", "4", "--json")
    assert isinstance(json.loads(fa_edge(*ask).stdout)["transcript"], str)  # unasked: it listened first
    assert json.loads(fa_edge(*ask, "--no-listen-first").stdout)["transcript"] is None
    assert json.loads(fa_edge(*ask, "--prompt", "Describe the sound.").stdout)["transcript"] is None


def test_an_answer_model_of_another_vocabulary_is_refused(tiny_ckpt, tmp_path):
    from falcon_audio_edge.export.bundle import export_bundle

    with pytest.raises(ExportError, match="has another vocabulary than the model"):
        export_bundle(tiny_ckpt, tmp_path / "b", decoder_type="f32", answer_llm=smollm2_gguf(), verify=False)
    with pytest.raises(ExportError, match="answer LLM not found"):
        export_bundle(tiny_ckpt, tmp_path / "b", answer_llm=tmp_path / "missing.gguf")
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_cli_listen_first_and_quantize_keep_the_answer_model(answer_bundle, clips, tmp_path):
    out = json.loads(fa_edge("ask", answer_bundle, "--audio", clips["q0"], "--listen-first", "--max-tokens", "4",
                             "--json").stdout)  # fmt: skip
    assert isinstance(out["transcript"], str) and out["generated_tokens"] >= 1 and out["timings"]["listen_ms"] > 0
    streamed = fa_edge("ask", answer_bundle, "--audio", clips["q0"], "--listen-first", "--max-tokens", "4")
    assert f"(heard: {out['transcript']!r})" in streamed.stderr  # what was heard, beside the streamed answer
    fa_edge("quantize", answer_bundle, "-o", tmp_path / "q8", "--decoder", "q8_0", "--encoder", "fp32")
    copied = read_bundle(tmp_path / "q8")
    assert copied.answer_path is not None
    assert (tmp_path / "q8" / ANSWER_FILE).read_bytes() == (answer_bundle / ANSWER_FILE).read_bytes()


def test_listen_first_transcribes_with_the_decoding_settings_asked_for(ctc_bundle, bundle_f32, clips, tmp_path):
    from falcon_audio_edge.export.bundle import export_bundle

    from falcon_audio_edge.runtime.backend import open_bundle
    from falcon_audio_edge.runtime.listening import LISTEN_MAX_TOKENS

    bundle = export_bundle(ctc_bundle[0], tmp_path / "b", decoder_type="f32",
                           answer_llm=bundle_f32 / "decoder.gguf", verify=False)  # fmt: skip
    heard = {}
    with open_bundle(bundle) as chat:
        for prob in (0.0, 0.01):
            chat.reset()
            turn = chat.ask(clips["q1"], None, GenerationSettings(max_tokens=4, ctc_proposal_prob=prob), True).run()
            chat.reset()
            alone = GenerationSettings(max_tokens=LISTEN_MAX_TOKENS, ctc_weight=0.5, ctc_proposal_prob=prob)
            assert turn.transcript == chat.ask(clips["q1"], TRANSCRIBE_PROMPT, alone).run().text.strip()
            heard[prob] = turn.transcript
    assert heard[0.0] != heard[0.01]  # the proposals asked for reach the transcription


def test_listening_settings_name_what_is_asked_and_a_zero_turns_it_off(ctc_bundle):
    from dataclasses import replace

    from falcon_audio_edge.runtime.backend import open_bundle
    from falcon_audio_edge.runtime.listening import LISTEN_MAX_TOKENS

    gen = GenerationSettings(max_tokens=4, beam_size=2, ctc_proposal_prob=0.05)
    with open_bundle(ctc_bundle[1]) as chat:
        default = chat.listening_for(gen)
        assert (default.ctc_weight, default.char_weight) == (0.5, 0.0)  # the model's transcription default
        assert (default.max_tokens, default.beam_size, default.ctc_proposal_prob) == (LISTEN_MAX_TOKENS, 2, 0.05)
        assert chat.listening_for(gen, ctc=0.0).guide_weight == 0.0  # 0 turns guidance off
        assert chat.listening_for(gen, ctc=0.3).ctc_weight == 0.3
        assert chat.listening_for(replace(gen, ctc_weight=0.3)).ctc_weight == 0.3  # the API's generation stands
        with pytest.raises(FaEdgeError, match="listening settings are for a listen-first turn"):
            chat.ask(None, "Hello", gen, listening=default)


def test_prepare_listen_first_loads_the_answer_model_and_the_ctc_table_ahead(
    ctc_bundle, bundle_f32, clips, tmp_path, monkeypatch
):
    from falcon_audio_edge.export.bundle import export_bundle

    from falcon_audio_edge.runtime import backend as backend_module
    from falcon_audio_edge.runtime.backend import open_bundle

    bundle = export_bundle(ctc_bundle[0], tmp_path / "b", decoder_type="f32",
                           answer_llm=bundle_f32 / "decoder.gguf", verify=False)  # fmt: skip
    gen = GenerationSettings(max_tokens=4)
    with open_bundle(bundle) as chat, open_bundle(bundle) as cold:
        chat.prepare_listen_first()
        assert chat._answerer is not None and chat.backend._ctc_loading is not None
        chat.backend._ctc_loading.result(timeout=60)  # the table was read in the background
        first = chat.ask(clips["q0"], None, gen, listen_first=True).run()
        assert chat.backend._ctc is not None and chat.backend._ctc_loading is None
        without = cold.ask(clips["q0"], None, gen, listen_first=True).run()  # the table read when first needed
        assert first.transcript == without.transcript and first.tokens == without.tokens

    def broken(*args):
        raise BundleError("the CTC head cannot be read")

    monkeypatch.setattr(backend_module, "load_ctc_head", broken)
    with open_bundle(bundle) as chat:
        chat.prepare_listen_first()  # no error yet: it surfaces where the table is needed
        with pytest.raises(BundleError, match="cannot be read"):
            chat.ask(clips["q0"], None, gen, listen_first=True).run()


def test_a_text_turn_fed_ahead_answers_with_the_same_tokens(answer_bundle):
    """start_text feeds a text turn's user text so far (a transcript still being heard); the turn then keeps what
    its text shares with it and feeds the rest: the same answer as the text fed at once, on later turns too, and
    text that turned out otherwise is taken back."""
    from falcon_audio_edge.runtime.backend import open_bundle

    gen = GenerationSettings(max_tokens=6, ignore_end_of_turn=True)
    first, second = "what is the capital of france", "and what about italy then"
    with open_bundle(answer_bundle) as chat:
        answerer = chat.answerer()
        want = [answerer.ask(None, first, gen).run(), answerer.ask(None, second, gen).run()]
        answerer.reset()
        for partials in (["what is", "what is the capit"], ["where was"], []):
            for k, (text, partial) in enumerate(zip((first, second), (partials, partials[:1]), strict=True)):
                for part in partial:
                    answerer.start_text(part)
                got = answerer.ask(None, text, gen).run()
                assert got.tokens == want[k].tokens and got.prompt_tokens == want[k].prompt_tokens, (partials, k)
            answerer.reset()
        answerer.start_text(first, whole=True)  # the whole text and the template up to the answer
        assert answerer.backend.n_past == want[0].prompt_tokens
        assert answerer.ask(None, first, gen).run().tokens == want[0].tokens
        answerer.start_text(second + " and more", whole=True)  # a guess the turn's text takes back in part
        assert answerer.ask(None, second, gen).run().tokens == want[1].tokens
        answerer.reset()
        answerer.start_text("hello there")
        assert answerer.backend.n_past > 0
        answerer.cancel_turn()
        assert answerer.backend.n_past == 0 and answerer.ask(None, first, gen).run().tokens == want[0].tokens

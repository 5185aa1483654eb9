"""The assistant: endpointing on WAV streams, the microphone through a real PulseAudio, the app in tmux."""

from __future__ import annotations

import io
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from falcon_audio_edge.apps import capture
from falcon_audio_edge.apps.assistant import AssistantSettings
from falcon_audio_edge.apps.capture import AudioDeviceError, InputDevice, Microphone, level_dbfs, resolve_device
from falcon_audio_edge.apps.endpoint import Endpointer, EndpointSettings, Pause, Resumed, SpeechStarted, Utterance
from falcon_audio_edge.apps.screen import Screen
from falcon_audio_edge.apps.speaker import Speaker

from falcon_audio_edge.audio import SAMPLE_RATE
from falcon_audio_edge.errors import ConfigError
from tests.conftest import speak
from tests.pulse import HEADPHONES, PulseServer


def stream(endpointer: Endpointer, samples: np.ndarray, seed: int = 0) -> list:
    """Feed in blocks of random sizes, as a sound card would."""
    rng, events, i = np.random.default_rng(seed), [], 0
    while i < len(samples):
        n = int(rng.integers(160, 2000))
        events += list(endpointer.feed(samples[i : i + n]))
        i += n
    return events


def utterances(events: list) -> list[Utterance]:
    return [e for e in events if isinstance(e, Utterance)]


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> dict[str, np.ndarray]:
    folder = tmp_path_factory.mktemp("speech")
    out = {}
    for name, text in (("a", "What is the capital of France?"), ("b", "How many legs does a spider have?")):
        out[name] = sf.read(str(speak(text, folder / f"{name}.wav")), dtype="float32")[0]
    long_text = " ".join(["The quick brown fox jumps over the lazy dog and keeps on running"] * 9)
    out["long"] = sf.read(str(speak(long_text, folder / "long.wav", rate=175)), dtype="float32")[0]
    return out


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32)


def test_silence_and_noise_are_not_speech():
    assert stream(Endpointer(), silence(5)) == []
    noise = np.random.default_rng(0).normal(0, 0.03, 5 * SAMPLE_RATE).astype(np.float32)  # about -30 dBFS
    assert utterances(stream(Endpointer(), noise)) == []


def test_two_utterances_with_a_pause(speech):
    a, b = speech["a"], speech["b"]
    audio = np.concatenate([silence(1), a, silence(1.5), b, silence(1.5)])
    events = [e for e in stream(Endpointer(), audio) if not isinstance(e, (Pause, Resumed))]
    assert [type(e) for e in events] == [SpeechStarted, Utterance, SpeechStarted, Utterance]
    first, second = utterances(events)
    for utt, clip in ((first, a), (second, b)):
        assert not utt.capped
        assert abs(utt.seconds - len(clip) / SAMPLE_RATE) < 0.6  # speech plus pre-roll, minus espeak's own tail
    assert 0.6 < first.start_s < 1.2 and first.end_s < second.start_s


def test_new_speech_hands_out_each_utterance_while_it_arrives(speech):
    a, b = speech["a"], speech["b"]
    audio = np.concatenate([silence(1), a, silence(1.5), b, silence(1.5)])
    endpointer, rng, i = Endpointer(), np.random.default_rng(1), 0
    handed, done = [], []
    while i < len(audio):
        n = int(rng.integers(160, 2000))
        for event in endpointer.feed(audio[i : i + n]):
            if isinstance(event, Utterance):
                done.append((event, np.concatenate(handed)))
                handed = []
        if endpointer.in_speech:
            handed.append(endpointer.new_speech())
        else:
            assert len(endpointer.new_speech()) == 0  # nothing between utterances
        i += n
    assert len(done) == 2
    for utt, early in done:  # what was handed out is the utterance's start (its end came with the event)
        assert 0 < len(early) and np.array_equal(utt.samples[: len(early)], early[: len(utt.samples)])


def test_a_pause_gives_the_utterance_as_it_will_end_and_speech_again_says_so(speech):
    a, b = speech["a"], speech["b"]
    audio = np.concatenate([silence(1), a, silence(0.1), b, silence(1.5)])  # one utterance: a short pause
    events = stream(Endpointer(), audio, seed=2)
    kinds = [type(e) for e in events]
    assert kinds[0] is SpeechStarted and kinds[-2:] == [Pause, Utterance] and kinds.count(Utterance) == 1
    pauses = [e for e in events if isinstance(e, Pause)]
    assert len(pauses) >= 2 and kinds.count(Resumed) == len(pauses) - 1  # each pause but the last one resumed
    whole = events[-1].samples
    assert np.array_equal(pauses[-1].samples, whole)  # the last pause guessed the utterance exactly
    first = pauses[0].samples  # the first: the utterance's start, up to just after "a"
    assert np.array_equal(whole[: len(first)], first) and len(first) < len(whole) - len(b) / 2
    quiet = [type(e) for e in stream(Endpointer(EndpointSettings(speculate_ms=0)), audio)]
    assert quiet == [SpeechStarted, Utterance]


def test_speech_that_never_ends_is_cut_at_the_model_window(speech):
    long = speech["long"]
    assert len(long) > 31 * SAMPLE_RATE, "the long clip must outlast the 30 s window"
    events = stream(Endpointer(EndpointSettings(end_silence_ms=1000)), np.concatenate([silence(0.5), long]))
    first = utterances(events)[0]
    assert first.capped and first.seconds == pytest.approx(30.0, abs=0.05)


def test_endpoint_settings_are_validated():
    with pytest.raises(ConfigError, match="threshold must be in"):
        EndpointSettings(threshold=1.5)
    with pytest.raises(ConfigError, match="max_seconds must be in"):
        EndpointSettings(max_seconds=45)
    with pytest.raises(ConfigError, match=r"end_silence_ms must be above speculate_ms = 700 .*, got 700"):
        EndpointSettings(speculate_ms=700)
    assert EndpointSettings(end_silence_ms=150, speculate_ms=0).end_silence_ms == 150  # no speculation: any wait
    with pytest.raises(ConfigError, match="speculate_ms must be 0 or in"):
        EndpointSettings(speculate_ms=50)


def test_assistant_settings_are_validated_before_anything_is_built(tmp_path):
    with pytest.raises(ConfigError, match="speech_rate must be an integer from 80 to 450"):
        AssistantSettings(tmp_path, speech_rate=20)
    env = {**os.environ, "FA_EDGE_HOME": str(tmp_path / "home")}
    for flags, error in ((["--speech-rate", "1000"], "speech_rate must be an integer from 80 to 450"),
                         (["--end-silence-ms", "150"], "end_silence_ms must be above speculate_ms = 200")):  # fmt: skip
        cmd = [sys.executable, "-m", "falcon_audio_edge.cli", "assistant", *flags]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {error}")
    assert not (tmp_path / "home").exists()  # the demo bundle was not built for settings that cannot work


def test_listen_first_assistant_needs_an_answer_model(bundle_f16):
    from falcon_audio_edge.apps.assistant import Assistant

    from falcon_audio_edge.errors import FaEdgeError

    with pytest.raises(FaEdgeError, match="listen-first needs a bundle with an answer model"):
        Assistant(AssistantSettings(bundle_f16, listen_first=True))  # before the microphone is looked for
    proc = subprocess.run([sys.executable, "-m", "falcon_audio_edge.cli", "assistant", str(bundle_f16),
                           "--listen-first"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "error: listen-first needs a bundle with an answer model" in proc.stderr


def test_level_meter():
    assert level_dbfs(np.zeros(100, np.float32)) == -100.0
    assert level_dbfs(np.full(100, 0.5, np.float32)) == pytest.approx(-6.02, abs=0.01)


def test_model_text_cannot_drive_the_terminal_or_break_the_voice(tmp_path):
    # an untrained model emits any byte: a CR, a form feed or an ESC sequence must be shown, not obeyed
    out = io.StringIO()
    screen = Screen(out)
    screen.write("Paris\r\x1b[2J\x0c\x00 é\tok\n")
    assert out.getvalue().endswith("Paris\\r\\x1b[2J\\x0c\\x00 é\tok\n")
    # a NUL in espeak-ng's argument would make Popen raise; the speaker says the text around it
    said = tmp_path / "said.txt"
    fake = tmp_path / "espeak-ng"
    fake.write_text(f'#!/bin/sh\nfor a; do last="$a"; done\nprintf "%s" "$last" > {said}\n')
    fake.chmod(0o755)
    speaker = Speaker(enabled=True)
    speaker.binary, speaker.enabled = str(fake), True
    speaker.say("Paris\x00 is\x1b big.\n")
    speaker.wait()
    assert said.read_text() == "Paris  is  big.\n"


# -- the real audio stack: PulseAudio null sink -> virtual source -> ALSA pulse -> PortAudio -> sounddevice --


@pytest.fixture(scope="module")
def pulse(tmp_path_factory):
    why = PulseServer.missing()
    if why:
        pytest.skip(why)
    server = PulseServer(tmp_path_factory.mktemp("pulse"))
    try:
        server.start()
    except (RuntimeError, OSError) as exc:
        pytest.skip(f"PulseAudio cannot start here: {exc}")
    saved = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    yield server
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def question_wav(tmp_path_factory) -> Path:
    return speak("What is the capital of France?", tmp_path_factory.mktemp("q") / "q.wav")


def record(mic: Microphone, seconds: float) -> np.ndarray:
    """``seconds`` of audio at 16 kHz (the sound server may deliver it late, so count samples, not time)."""
    blocks, n = [], 0
    while n < seconds * SAMPLE_RATE:
        blocks.append(mic.read(timeout=5.0))
        n += len(blocks[-1])
    return np.concatenate(blocks)


@pytest.mark.parametrize("force_resample", [False, True])
def test_microphone_records_played_speech_and_the_endpointer_finds_it(pulse, question_wav, monkeypatch,
                                                                      force_resample):  # fmt: skip
    import sounddevice as sd

    if force_resample:  # a device that refuses 16 kHz: opened at its own rate and resampled

        def refuse(**kwargs):
            raise sd.PortAudioError("Invalid sample rate")

        monkeypatch.setattr(sd, "check_input_settings", refuse)
    device = resolve_device("pulse")
    with Microphone(device) as mic:
        assert (mic.rate != SAMPLE_RATE) == force_resample
        player = pulse.play(question_wav, wait=False)
        audio = record(mic, 4.0)
        player.wait(timeout=10)
    played = sf.read(str(question_wav), dtype="float32")[0]
    assert abs(len(audio) / SAMPLE_RATE - 4.0) < 0.1
    assert level_dbfs(audio) > -40
    found = utterances(stream(Endpointer(), np.concatenate([audio, silence(1)])))
    assert len(found) == 1 and abs(found[0].seconds - len(played) / SAMPLE_RATE) < 0.8


def test_unknown_device_and_a_device_that_disappears(pulse, tmp_path):
    with pytest.raises(AudioDeviceError, match="no input device matches 'no-such-mic'"):
        resolve_device("no-such-mic")
    try:
        with Microphone(resolve_device("pulse")) as mic:
            mic.read(timeout=10.0)  # a sound server started under load can take seconds to deliver its first block
            pulse.stop()  # the sound server (and with it the device) goes away mid-recording
            with pytest.raises(AudioDeviceError, match="delivered no audio"):
                for _ in range(200):
                    mic.read(timeout=1.0)
    finally:
        pulse.start()  # for the tests after this one, whatever happened here


class StuckStream:
    """A PortAudio stream whose stop never returns, as on a device whose sound server went away."""

    def __init__(self):
        self.release = threading.Event()

    def abort(self):
        self.release.wait()

    stop = abort

    def close(self):
        pass


def test_closing_a_stream_that_never_stops_gives_up_within_its_bound(monkeypatch, capsys):
    monkeypatch.setattr(capture, "CLOSE_TIMEOUT_S", 0.5)
    unregistered = []
    monkeypatch.setattr(capture.atexit, "unregister", unregistered.append)  # PortAudio's exit handler would block
    mic = Microphone.__new__(Microphone)
    mic.device, mic._stream = InputDevice(0, "gone", 1, 16000.0, True), StuckStream()
    stream = mic._stream
    t0 = time.monotonic()
    try:
        mic.close()
        assert time.monotonic() - t0 < 2.0
        assert "did not close within 0.5 s" in capsys.readouterr().err
        assert len(unregistered) == 1
        mic.close()  # a second close does nothing
        mic._queue = queue.Queue()
        with pytest.raises(AudioDeviceError, match="the stream stopped"):
            mic.read(timeout=0.1)
    finally:
        stream.release.set()


# -- the app in a terminal --


class Tmux:
    def __init__(self, name: str, env: dict[str, str]):
        self.name, self.env = name, env

    def start(self, command: list[str]) -> None:
        env_args = [x for k, v in self.env.items() for x in ("-e", f"{k}={v}")]
        subprocess.run(["tmux", "new-session", "-d", "-s", self.name, "-x", "200", "-y", "50", *env_args,
                        " ".join(command)], check=True)  # fmt: skip

    def screen(self) -> str:
        out = subprocess.run(["tmux", "capture-pane", "-p", "-J", "-S", "-200", "-t", self.name],
                             capture_output=True, text=True)  # fmt: skip
        return out.stdout

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def wait_for(self, pattern: str, timeout: float = 60, count: int = 1) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.screen()
            if len(re.findall(pattern, text)) >= count:
                return text
            time.sleep(0.2)
        raise AssertionError(f"{pattern!r} x{count} did not appear within {timeout} s; screen:\n{self.screen()}")

    def alive(self) -> bool:
        return subprocess.run(["tmux", "has-session", "-t", self.name], capture_output=True).returncode == 0

    def ended(self, timeout: float = 20) -> bool:
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        return not self.alive()

    def kill(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


@pytest.fixture
def tmux(pulse):
    if not shutil.which("tmux"):
        pytest.skip("tmux is not installed")
    session = Tmux(f"fa-edge-test-{os.getpid()}", pulse.env)
    yield session
    session.kill()


def assistant_cmd(bundle: Path, *extra: str) -> list[str]:
    log = bundle.parent / "assistant-stderr.log"
    return [sys.executable, "-m", "falcon_audio_edge.cli", "assistant", str(bundle), "--input-device", "pulse",
            "--max-tokens", "12", *extra, "2>" + str(log)]  # fmt: skip


def two_spoken_turns(tmux, pulse, question_wav, speech, tmp_path) -> tuple[str, str, int, int]:
    """Two questions played to a started assistant: the screen after each, and the context it reported."""
    tmux.wait_for(r"\[listening\]")
    pulse.play(question_wav)
    first = tmux.wait_for(r"context (\d+) tokens")
    b = tmp_path / "b.wav"
    sf.write(str(b), speech["b"], SAMPLE_RATE)
    pulse.play(b)
    second = tmux.wait_for(r"context (\d+) tokens", count=2)
    n1, n2 = (int(re.findall(r"context (\d+) tokens", screen)[-1]) for screen in (first, second))
    return first, second, n1, n2


def test_two_turns_in_a_terminal_keep_the_conversation(tmux, pulse, bundle_f16, question_wav, speech, tmp_path):
    tmux.start(assistant_cmd(bundle_f16, "--no-speak"))
    first, second, n1, n2 = two_spoken_turns(tmux, pulse, question_wav, speech, tmp_path)
    assert "you: [" in first and "assistant: " in first
    assert n2 > n1 + 20  # the second turn sits on top of the first in the KV cache
    assert re.search(r"first token \d+\.\d\d s after end of speech \(0\.70 s of it waiting for silence\)", second)
    tmux.keys("r", "Enter")
    tmux.wait_for(r"\(new conversation\)")
    tmux.keys("q", "Enter")
    assert tmux.ended()


def test_a_model_heard_in_short_windows_answers_turns_fed_while_they_are_spoken(
    tmux, pulse, question_wav, speech, tmp_path
):
    """A model trained with 1 s encoder windows: the assistant feeds each window as it ends (AudioChat.start_audio)
    and answers both turns on one conversation."""
    from falcon_audio_edge.export.bundle import export_bundle

    from falcon_audio_edge.checkpoint import init_checkpoint

    ckpt = init_checkpoint("tiny", tmp_path / "ckpt", seed=3, pool_factor=4, window_ms=1000)
    bundle = export_bundle(ckpt, tmp_path / "windowed", decoder_type="f16", verify=False)
    tmux.start(assistant_cmd(bundle, "--no-speak"))
    first, second, n1, n2 = two_spoken_turns(tmux, pulse, question_wav, speech, tmp_path)
    assert "assistant: " in first and "assistant: " in second
    assert n2 > n1 + 20  # the second turn sits on top of the first in the KV cache
    tmux.keys("q", "Enter")
    assert tmux.ended()


def test_listen_first_turns_say_what_was_heard_and_keep_the_answer_models_conversation(
    tmux, pulse, tiny_ckpt, bundle_f32, question_wav, speech, tmp_path
):
    from falcon_audio_edge.export.bundle import export_bundle

    bundle = export_bundle(tiny_ckpt, tmp_path / "answering", decoder_type="f16",
                           answer_llm=bundle_f32 / "decoder.gguf", verify=False)  # fmt: skip
    tmux.start(assistant_cmd(bundle, "--no-speak"))  # listens first unasked: the bundle has an answer model
    first, _, n1, n2 = two_spoken_turns(tmux, pulse, question_wav, speech, tmp_path)
    assert "(heard: " in first and "assistant: " in first
    assert n2 > n1  # the answer model's conversation grew
    tmux.keys("q", "Enter")
    assert tmux.ended()


def test_it_does_not_answer_its_own_voice_and_ctrl_c_stops_speaking(tmux, pulse, bundle_f16, question_wav):
    # speaks into the same sink the mic hears; slowly, so that the Ctrl-C below lands while it speaks
    tmux.start(assistant_cmd(bundle_f16, "--max-tokens", "60", "--speech-rate", "80"))
    tmux.wait_for(r"\[listening\]")
    pulse.play(question_wav)
    tmux.wait_for(r"\[speaking\]", timeout=60)
    tmux.keys("C-c")
    tmux.wait_for(r"\[stopped speaking\]")
    tmux.wait_for(r"\[listening\]")
    time.sleep(3)  # anything the app said must not come back as a question
    assert tmux.screen().count("you: [") == 1
    assert tmux.alive()
    tmux.keys("C-c")  # while listening: quit (the tmux session ends with the app)
    assert tmux.ended()


def test_speaking_over_an_answer_stops_it_and_is_heard_with_barge_in(tmux, pulse, bundle_f16, question_wav, speech,
                                                                    tmp_path):  # fmt: skip
    tmux.env = {**tmux.env, "PULSE_SINK": HEADPHONES}  # the voice in headphones: the microphone does not hear it
    tmux.start(assistant_cmd(bundle_f16, "--max-tokens", "60", "--speech-rate", "80", "--barge-in"))
    tmux.wait_for(r"\[listening\]")
    pulse.play(question_wav)
    tmux.wait_for(r"\[speaking\]", timeout=60)
    b = tmp_path / "b.wav"
    sf.write(str(b), speech["b"], SAMPLE_RATE)
    pulse.play(b)  # the user speaks over the answer
    tmux.wait_for(r"\[you spoke: stopped speaking, listening\]")
    screen = tmux.wait_for(r"you: \[(\d+\.\d) s of speech\]", count=2, timeout=60)
    spoken = float(re.findall(r"you: \[(\d+\.\d) s of speech\]", screen)[-1])
    assert abs(spoken - len(speech["b"]) / SAMPLE_RATE) < 0.8  # the whole question heard, its start included
    tmux.keys("q", "Enter")
    assert tmux.ended(timeout=60)
    with pytest.raises(ConfigError, match="barge_in stops a spoken answer when the user speaks"):
        AssistantSettings(tmp_path, push_to_talk=True, barge_in=True)


def test_the_app_path_does_not_import_torch_or_transformers():
    code = ("import sys, falcon_audio_edge.apps.assistant, falcon_audio_edge.runtime.backend; "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; assert not bad, bad")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True)

"""``fa-edge assistant``: the offline voice assistant on a real microphone.

Hands-free by default (Silero VAD finds the end of each utterance), or push-to-talk (Enter starts and
stops). The answer streams on screen and is spoken by espeak-ng; the microphone is ignored while the
assistant speaks (and for a short echo tail after), so it never answers its own voice. The conversation
keeps its KV cache across turns until ``r``. While the user is still speaking, the text of the turn before
the audio is already fed to the decoder, then each encoder window as soon as it is over (``AudioChat.start_audio``:
a model trained with windows under 30 s; one heard in Whisper's 30 s windows is encoded at the end); a listen-first
turn hears its settled phrases instead (``AudioChat.start_hearing``).

Ctrl-C while thinking or speaking stops that turn and goes back to listening; Ctrl-C while listening quits,
as does ``q``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from falcon_audio_edge.apps.capture import AudioDeviceError, Microphone, level_dbfs, resolve_device
from falcon_audio_edge.apps.endpoint import Endpointer, EndpointSettings, Pause, Resumed, SpeechStarted, Utterance
from falcon_audio_edge.apps.keyboard import HELP, Keyboard
from falcon_audio_edge.apps.screen import Screen
from falcon_audio_edge.apps.speaker import Speaker

from falcon_audio_edge.audio import CHUNK_LENGTH, SAMPLE_RATE, Audio
from falcon_audio_edge.errors import ConfigError, ContextFullError, FaEdgeError
from falcon_audio_edge.settings import GenerationSettings, RuntimeSettings

CONTEXT_FULL = "(the conversation filled the model's context: type r and Enter to start a new one)"


@dataclass(frozen=True)
class AssistantSettings:
    bundle: Path
    push_to_talk: bool = False
    speak: bool = True
    input_device: str | None = None
    threads: int = 0
    max_tokens: int = 128
    temperature: float = 0.0
    speech_rate: int = 170  # words per minute of the spoken answers (espeak-ng takes 80-450)
    echo_tail_ms: int = 300  # the microphone stays ignored this long after the assistant stops speaking
    # transcribe, then the bundle's answer model answers (it keeps the conversation); None: where the bundle has one
    listen_first: bool | None = None
    # speech while it speaks stops the voice and starts a turn: for headphones (through a loudspeaker its own
    # voice reaches the microphone and would stop it)
    barge_in: bool = False
    endpoint: EndpointSettings = field(default_factory=EndpointSettings)

    def __post_init__(self) -> None:
        if not isinstance(self.speech_rate, int) or not 80 <= self.speech_rate <= 450:
            raise ConfigError(
                f"speech_rate must be an integer from 80 to 450 (words per minute), got {self.speech_rate!r}"
            )
        if self.echo_tail_ms < 0:
            raise ConfigError(f"echo_tail_ms must be >= 0, got {self.echo_tail_ms!r}")
        if self.barge_in and (self.push_to_talk or not self.speak):
            raise ConfigError("barge_in stops a spoken answer when the user speaks: it needs hands-free listening and "
                              f"spoken answers; got push_to_talk={self.push_to_talk}, speak={self.speak}")  # fmt: skip
        GenerationSettings(max_tokens=self.max_tokens, temperature=self.temperature)  # validates them
        RuntimeSettings(threads=self.threads)


@dataclass
class TurnStats:
    speech_s: float
    first_token_after_speech_s: float  # end of speech -> first token (includes the end-of-speech wait)
    waiting_for_silence_s: float  # the part of it spent deciding the user had stopped
    tokens_per_s: float
    context_tokens: int
    capped: bool


class Assistant:
    def __init__(self, settings: AssistantSettings, screen: Screen | None = None, keyboard=None):
        from falcon_audio_edge.runtime.backend import open_bundle
        from falcon_audio_edge.runtime.bundle import read_bundle

        has_answer_model = read_bundle(settings.bundle, verify=False).has_answer_model
        if settings.listen_first and not has_answer_model:
            raise FaEdgeError(f"listen-first needs a bundle with an answer model; {settings.bundle} has none "
                              "(fa-edge export --answer-llm)")  # fmt: skip
        if settings.listen_first is None:
            settings = replace(settings, listen_first=has_answer_model)
        self.settings = settings
        self.screen = screen or Screen()
        self.keyboard = keyboard if keyboard is not None else Keyboard()
        self.device = resolve_device(settings.input_device)
        self.chat = open_bundle(settings.bundle, RuntimeSettings(threads=settings.threads))
        if settings.listen_first:
            self.chat.prepare_listen_first()  # the first question then waits for neither
        self.endpointer = Endpointer(settings.endpoint)
        self.speaker = Speaker(settings.speak, rate=settings.speech_rate, warn=self.screen.line)
        self.gen = GenerationSettings(max_tokens=settings.max_tokens, temperature=settings.temperature,
                                      **self.chat.decoding.search())  # the bundle's own search  # fmt: skip
        self.recording: list[np.ndarray] | None = None  # push-to-talk buffer
        self.recorded = 0  # samples in it
        self.hearing = None  # a listen-first turn's transcription, heard while the user speaks (runtime/listen.py)
        self.stream = None  # a turn's encoder windows, fed while the user speaks (runtime/stream.py)
        self.turns: list[TurnStats] = []
        self.running = True

    # -- the loop --
    def run(self) -> None:
        mode = "push-to-talk: press Enter to start and stop" if self.settings.push_to_talk else "hands-free"
        self.screen.line(f"fa-edge assistant · {self.settings.bundle} · mic: {self.device.name} · {mode}")
        self.screen.line(HELP)
        mic = self._open_mic()
        try:
            while self.running:
                self._commands(mic)
                try:
                    block = mic.read(timeout=2.0)
                except AudioDeviceError as exc:
                    mic = self._recover(mic, exc)
                    continue
                self._listen(block, mic)
        except KeyboardInterrupt:
            pass  # Ctrl-C while listening: quit
        finally:
            mic.close()
            self.speaker.stop()
            self._drop_hearing()
            self.chat.close()
            self.screen.line("bye")

    def _open_mic(self) -> Microphone:
        return Microphone(self.device)

    def _recover(self, mic: Microphone, exc: Exception) -> Microphone:
        """The microphone failed: say so, keep the conversation, try to reopen it every second."""
        mic.close()
        self.screen.line(f"microphone problem: {exc}; retrying (the conversation is kept)")
        self.endpointer.reset()
        self._drop_hearing()
        self.chat.cancel_turn()  # a stream's windows with it
        self.stream = None
        while self.running:
            time.sleep(1.0)
            self._commands(None)
            try:
                self.device = resolve_device(self.settings.input_device)
                return self._open_mic()
            except AudioDeviceError:
                continue
        return mic

    def _commands(self, mic: Microphone | None) -> None:
        while (cmd := self.keyboard.poll()) is not None:
            if cmd == "quit":
                self.running = False
            elif cmd == "reset":
                self._drop_hearing()
                self.chat.reset()  # a stream's windows with the rest
                self.stream = None
                self.endpointer.reset()
                self.screen.line("(new conversation)")
            elif cmd == "talk" and self.settings.push_to_talk and mic is not None:
                self._toggle_recording(mic)
            elif cmd == "help" or cmd.startswith("unknown"):
                self.screen.line(HELP)

    def _listen(self, block: np.ndarray, mic: Microphone) -> None:
        self.screen.status(level_db=level_dbfs(block))
        if self.settings.push_to_talk:
            if self.recording is not None:
                self.recording.append(block)
                self.recorded += len(block)
                kept = CHUNK_LENGTH * SAMPLE_RATE - (self.recorded - len(block))  # what the utterance will hold
                self._hear(block[: max(0, kept)])
                if self.recorded >= CHUNK_LENGTH * SAMPLE_RATE:
                    self.screen.line(f"(reached the model's {CHUNK_LENGTH} s window: stopped recording)")
                    self._toggle_recording(mic)
            return
        self._events(self.endpointer.feed(block), mic)

    def _events(self, events, mic: Microphone) -> None:
        """What the endpointer finds in a block (as it finds it), then the utterance's new audio to the hearing."""
        for event in events:
            self._event(event, mic)
        if (self.hearing is not None or self.stream is not None) and self.endpointer.in_speech:
            self._hear(self.endpointer.new_speech())

    def _event(self, event, mic: Microphone) -> None:
        if isinstance(event, SpeechStarted):
            self._start_turn()
        elif isinstance(event, Pause) and (self.hearing or self.stream) is not None:  # the rest before the end is sure
            self._hear(self.endpointer.new_speech())
            if (self.hearing or self.stream) is not None:
                (self.hearing or self.stream).speculate(event.samples)
        elif isinstance(event, Resumed) and (self.hearing or self.stream) is not None:
            (self.hearing or self.stream).unspeculate()
        elif isinstance(event, Utterance):
            self._answer(event, mic)

    def _hear(self, samples: np.ndarray) -> None:
        """A listen-first turn's pieces that are settled are transcribed while the user still speaks; another
        turn's encoder windows are fed as they end."""
        if self.stream is not None:
            self.stream.add(samples)
        if self.hearing is not None:
            try:
                self.hearing.add(samples)
            except FaEdgeError as exc:  # the rest is heard at the end; the error will show there if it persists
                self.screen.line(f"(could not hear that part yet: {exc})")
                self._drop_hearing()

    def _drop_hearing(self) -> None:
        """The turn's hearing is let go: its worker stops before anything else uses the model."""
        if self.hearing is not None:
            self.hearing.close()
            self.hearing = None

    def _toggle_recording(self, mic: Microphone) -> None:
        if self.recording is None:
            mic.drain()
            self.recording, self.recorded = [], 0
            self._start_turn()
            self.screen.status("recording", force=True)
            return
        samples = np.concatenate(self.recording) if self.recording else np.zeros(0, np.float32)
        self.recording = None
        capped = len(samples) >= CHUNK_LENGTH * SAMPLE_RATE
        end = len(samples) / SAMPLE_RATE
        self._answer(Utterance(samples[: CHUNK_LENGTH * SAMPLE_RATE], 0.0, end, capped), mic, wait_s=0.0)

    def _start_turn(self) -> None:
        """The turn's opening text into the decoder while the user speaks, then each encoder window as it ends (a
        listen-first turn starts with a transcription of its own instead)."""
        # a push-to-talk recording is not trimmed; an endpointer leaves out its end silence
        slack = 0.0 if self.settings.push_to_talk else self.settings.endpoint.end_silence_ms / 1000
        if not self.settings.listen_first:  # one a start of speech the endpointer let go left is taken back
            self.stream = self.chat.start_audio(None, slack)
        else:
            self._drop_hearing()  # a start of speech the endpointer let go (too short to be an utterance)
            self.hearing = self.chat.start_hearing(self.gen, slack)

    # -- one turn --
    def _answer(self, utt: Utterance, mic: Microphone, wait_s: float | None = None) -> None:
        """Answer an utterance (streamed), speak it, then listen again."""
        waited = self.settings.endpoint.end_silence_ms / 1000 if wait_s is None else wait_s
        detected = time.perf_counter()
        note = " (cut at the model's 30 s window)" if utt.capped else ""
        self.screen.line(f"you: [{utt.seconds:.1f} s of speech]{note}")
        self.screen.status("thinking", force=True)
        text = self._think(utt, detected, waited)
        barged = bool(text) and self._speak(text, mic)
        self.screen.status("listening", force=True)
        if not barged:  # what the microphone heard while thinking and speaking is not a question
            mic.drain()
            self.endpointer.reset()

    def _think(self, utt: Utterance, detected: float, waited: float) -> str:
        pieces: list[str] = []
        first = turn = None
        hearing, self.hearing, self.stream = self.hearing, None, None  # the turn takes the stream's windows
        try:
            turn = self.chat.ask(Audio(utt.samples, "microphone"), None, self.gen, self.settings.listen_first,
                                 hearing=hearing)  # fmt: skip
            self.screen.write("assistant: ")
            for piece in turn:
                first = first or time.perf_counter()
                pieces.append(piece)
                self.screen.write(piece)
            result = turn.result
        except KeyboardInterrupt:
            if turn is not None:
                turn.close()  # what was said so far stays in the conversation
            self.screen.line(" [stopped]")
            return ""
        except ContextFullError:
            self.screen.line(CONTEXT_FULL)
            return ""
        except FaEdgeError as exc:
            self.screen.line(f"(could not use that audio: {exc})")
            return ""
        finally:
            if hearing is not None:  # heard, or let go with the turn: its worker never outlives it
                hearing.close()
        self.screen.line()
        first = first or time.perf_counter()
        talker = self.chat.answerer() if self.settings.listen_first else self.chat  # who holds the conversation
        stats = TurnStats(utt.seconds, waited + first - detected, waited, result.timings.tokens_per_s,
                          talker.backend.n_past, utt.capped)  # fmt: skip
        if result.transcript is not None:
            self.screen.line(f"  (heard: {result.transcript!r})")
        if result.stop_reason == "context_full":
            self.screen.line(CONTEXT_FULL)
        self.turns.append(stats)
        self.screen.line(
            f"  first token {stats.first_token_after_speech_s:.2f} s after end of speech "
            f"({waited:.2f} s of it waiting for silence) · {stats.tokens_per_s:.1f} tok/s · "
            f"context {stats.context_tokens} tokens"
        )
        return "".join(pieces)

    def _speak(self, text: str, mic: Microphone) -> bool:
        """Say the answer; True where the user spoke over it (``barge_in``): their turn has begun."""
        if not self.speaker.enabled:
            return False
        self.screen.status("speaking", force=True)
        barged = False
        try:
            self.speaker.say(text)
            if self.settings.barge_in:
                barged = self._listen_while_speaking(mic)
            else:
                self.speaker.wait()
        except KeyboardInterrupt:
            self.screen.line("[stopped speaking]")
        finally:
            self.speaker.stop()
        if not barged:
            time.sleep(self.settings.echo_tail_ms / 1000)
        return barged

    def _listen_while_speaking(self, mic: Microphone) -> bool:
        """Until the answer is said, or the user starts speaking: then the voice stops and their turn begins
        (True). What the microphone heard while the assistant was thinking is dropped first."""
        mic.drain()
        self.endpointer.reset()
        while self.speaker.speaking:
            try:
                block = mic.read(timeout=0.2)
            except AudioDeviceError:
                continue  # nothing yet; a device that is gone shows in the main loop
            events = list(self.endpointer.feed(block))
            if any(isinstance(e, SpeechStarted) for e in events):
                self.speaker.stop()
                self.screen.line("[you spoke: stopped speaking, listening]")
                self._events(events, mic)
                return True
        return False


def list_devices_text() -> str:
    from falcon_audio_edge.apps.capture import input_devices

    lines = [f"{'*' if d.is_default else ' '} {d.index:3d}  {d.name}  ({d.channels} ch, {d.default_rate:g} Hz)"
             for d in input_devices()]  # fmt: skip
    return "\n".join(lines) if lines else "no input devices"

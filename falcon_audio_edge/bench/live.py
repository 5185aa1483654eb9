"""The response gap a person feels: each clip played at real time through the assistant's pipeline.

``fa-edge bench --live BUNDLE`` feeds a spoken question, then silence, in 32 ms blocks at 1x speed (a simulated
microphone) into the assistant's endpointer (Silero VAD, ``apps.endpoint``); the turn runs the way
``fa-edge assistant`` runs it: the turn's opening text goes into the decoder when speech starts, then each encoder
window as it ends (``AudioChat.start_audio``), or, listen-first
where the bundle has an answer model (its settled pieces transcribed while the question is still being spoken,
``runtime/listen.py``; the rest from the moment a pause begins), the answer streamed once the endpointer
reports the end of the utterance.
The gap is measured from the moment the last speech sample reached the microphone (a recording's, ``--clips``:
the last frame the endpointer hears as speech) to the first answer token, the wait for silence included. Beside
it, in the same run, the whole-clip path (``fa-edge ask``: the clip in hand -> first token) on the same clip,
and, where the bundle answers from the audio itself (no answer model: the PyTorch reference has none), the same
whole clip through the PyTorch reference of its checkpoint in bfloat16.
"""

from __future__ import annotations

import datetime as dt
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from falcon_audio_edge.audio import SAMPLE_RATE, Audio
from falcon_audio_edge.bench.clips import speech_clip
from falcon_audio_edge.errors import FaEdgeError

LIVE_SECONDS = (3.0, 8.0, 20.0)
LEAD_S = 0.5  # silence before a recording (--clips), so the endpointer hears its speech start as it would live
LONG_S = 4.0  # recordings this long or longer are summed up apart
BLOCK = 512  # samples a simulated microphone delivers at a time (32 ms, the endpointer's frame)
TAIL_S = 2.0  # silence played after the speech
SPEECH_DBFS = -40.0  # a 32 ms frame this loud (relative to the clip's peak) is speech, for the clip's end


@dataclass
class LiveTurn:
    clip_s: float  # the clip asked for
    speech_s: float  # the question's length, to its last speech sample
    gap_s: float  # the last speech sample reached the microphone -> the first answer token on screen
    endpoint_s: float  # the part of it spent deciding the person had stopped
    whole_clip_s: float  # the same clip given whole (fa-edge ask): clip in hand -> first token
    torch_bf16_s: float | None = None  # the same, through the PyTorch reference in bfloat16 (None: not measured)
    name: str = ""  # the recording's (--clips)


@dataclass
class Clip:
    """What is played: a spoken question of a length asked for, or a recording of a manifest."""

    name: str
    clip_s: float  # the length asked for, or the recording's
    samples: np.ndarray
    lead: int = 0  # samples of silence played before it


def recordings(manifest: Path) -> list[Clip]:
    """Each row's recording (``audio``, relative to the manifest), with LEAD_S of silence before it."""
    from falcon_audio_edge.audio import load_audio

    if not manifest.is_file():
        raise FaEdgeError(f"no such manifest: {manifest}")
    clips = []
    for n, line in enumerate(manifest.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            audio = json.loads(line)["audio"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise FaEdgeError(f'{manifest}:{n}: not a manifest row with an "audio" ({exc})') from None
        if not isinstance(audio, str) or not audio:
            raise FaEdgeError(f'{manifest}:{n}: "audio" must be a file path, got {audio!r}')
        samples = load_audio(manifest.parent / audio).samples
        lead = np.zeros(int(LEAD_S * SAMPLE_RATE), dtype=np.float32)
        clips.append(Clip(Path(audio).stem, len(samples) / SAMPLE_RATE, np.concatenate([lead, samples]), len(lead)))
    if not clips:
        raise FaEdgeError(f"{manifest} has no rows")
    return clips


class CutShort(FaEdgeError):
    """The endpointer ended the question in one of its pauses, or never heard it end."""


def speech_end(samples: np.ndarray) -> int:
    """Index just after the last 32 ms frame within SPEECH_DBFS of the clip's peak."""
    n = -(-len(samples) // BLOCK)
    frames = np.zeros(n * BLOCK)
    frames[: len(samples)] = samples
    frames = frames.reshape(n, BLOCK)  # (T,) -> (T/512, 512), the last frame padded with zeros
    rms = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
    if n == 0 or rms.max() < 1e-4:  # below -80 dBFS: digital silence
        raise FaEdgeError("the clip has no speech")
    loud = np.flatnonzero(rms >= rms.max() * 10 ** (SPEECH_DBFS / 20))
    return min(int(loud[-1] + 1) * BLOCK, len(samples))


def first_token_s(turn) -> float:
    """Run a streamed turn to its end; the clock time of its first piece."""
    first = None
    for _ in turn:
        first = first or time.perf_counter()
    return first or time.perf_counter()


def whole_clip_s(chat, clip: np.ndarray, gen, listen_first: bool = False) -> float:
    """A fresh conversation given the whole clip (fa-edge ask): seconds from the clip in hand to the first token."""
    chat.reset()
    t0 = time.perf_counter()
    return first_token_s(chat.ask(Audio(clip, "whole"), None, gen, listen_first)) - t0


def play(chat, endpointer, samples: np.ndarray, gen, listen_first: bool,
         vad_end: bool = False) -> tuple[float, float, float]:  # fmt: skip
    """Play ``samples`` (speech, then silence) at real time; (gap, endpoint wait, end of speech in ``samples``) in
    seconds. The end of speech: the last frame within SPEECH_DBFS of the peak, an utterance that ends before it is
    an error (a pause in the question); ``vad_end``: the last frame the endpointer hears as speech (a recording,
    whose breath or room after the words may be louder than that)."""
    from falcon_audio_edge.apps.endpoint import Pause, Resumed, SpeechStarted, Utterance

    end = speech_end(samples)
    samples = np.concatenate([samples if vad_end else samples[:end], np.zeros(int(TAIL_S * SAMPLE_RATE), np.float32)])
    t0 = time.perf_counter()
    spoken_end = t0 + end / SAMPLE_RATE
    hearing = stream = None  # as the assistant does: a listen-first turn's settled pieces are heard during
    # speech, another turn's encoder windows fed as they end
    slack = endpointer.settings.end_silence_ms / 1000
    try:
        for i in range(0, len(samples), BLOCK):
            time.sleep(max(0.0, t0 + (i + BLOCK) / SAMPLE_RATE - time.perf_counter()))  # the block arrives
            for event in endpointer.feed(samples[i : i + BLOCK]):
                if isinstance(event, SpeechStarted) and not listen_first:
                    stream = chat.start_audio(None, slack)
                elif isinstance(event, SpeechStarted):
                    if hearing is not None:  # a start of speech the endpointer let go
                        hearing.close()
                    hearing = chat.start_hearing(gen, slack)
                elif isinstance(event, Pause) and (hearing or stream) is not None:  # the utterance so far, the guess
                    (hearing or stream).add(endpointer.new_speech())
                    (hearing or stream).speculate(event.samples)
                elif isinstance(event, Resumed) and (hearing or stream) is not None:
                    (hearing or stream).unspeculate()
                elif isinstance(event, Utterance):
                    if i + BLOCK < end and not vad_end:
                        raise CutShort(f"the endpointer ended the question at {i / SAMPLE_RATE:.1f} s of "
                                       f"{end / SAMPLE_RATE:.1f} s (a pause in the clip)")  # fmt: skip
                    detected = time.perf_counter()
                    if vad_end:
                        spoken_end, end = t0 + event.end_s, round(event.end_s * SAMPLE_RATE)
                    turn = chat.ask(Audio(event.samples, "live"), None, gen, listen_first, hearing=hearing)
                    return first_token_s(turn) - spoken_end, detected - spoken_end, end / SAMPLE_RATE
            if (hearing or stream) is not None and endpointer.in_speech:
                (hearing or stream).add(endpointer.new_speech())
        raise CutShort(f"the endpointer never reported the end of the {end / SAMPLE_RATE:.1f} s question")
    finally:
        if hearing is not None:  # one an error left: its worker stops before the model is used again
            hearing.close()


def unheard(clip: Clip, endpoint) -> str | None:
    """Why the endpointer does not hear ``clip`` as one utterance (its speech probabilities computed once, as
    ``bench.pauses`` does), or None."""
    from falcon_audio_edge.apps.endpoint import Utterance

    from falcon_audio_edge.bench.pauses import replayed, speech_probs

    heard = sum(isinstance(e, Utterance) for e in replayed(speech_probs(clip.samples[clip.lead :]), endpoint))
    return None if heard == 1 else "never heard" if heard == 0 else "ended in a pause"


def live_turns(bundle, clips: list[Clip], repeats: int, tokens: int, threads: int, endpoint, progress=print,
               cut: list[str] | None = None) -> list[LiveTurn]:  # fmt: skip
    """Each clip played ``repeats`` times after a warm-up turn of its own, or where ``cut`` is given (recordings),
    once each after one warm-up turn on the first, the gap counted from the endpointer's own end of speech; a
    recording the endpointer ends in one of its pauses, or never hears (too short or quiet for it), is named in
    ``cut`` with why and left out. Without ``cut`` that is an error: the question asked has a pause that long."""
    from falcon_audio_edge.apps.endpoint import Endpointer

    from falcon_audio_edge.runtime.backend import open_bundle
    from falcon_audio_edge.runtime.bundle import read_bundle
    from falcon_audio_edge.settings import GenerationSettings, RuntimeSettings

    listen_first = read_bundle(bundle, verify=False).has_answer_model  # the assistant's default
    endpointer = Endpointer(endpoint)
    out = []
    with open_bundle(bundle, RuntimeSettings(threads=threads)) as chat:
        gen = GenerationSettings(max_tokens=tokens, ignore_end_of_turn=True, **chat.decoding.search())
        if listen_first:
            chat.prepare_listen_first()
        warmed = False
        for clip in clips:
            if cut is not None and (why := unheard(clip, endpoint)):
                cut.append(f"{clip.name} ({why})")
                continue
            warmups = 0 if cut is not None and warmed else 1  # recordings: one warm-up turn, on the first played
            for r in range(warmups + (repeats if cut is None else 1)):
                chat.reset()
                endpointer.reset()
                try:
                    gap, waited, end_s = play(chat, endpointer, clip.samples, gen, listen_first, cut is not None)
                except CutShort:  # a recording the endpointer did not hear end live, though it did offline
                    if cut is None:
                        raise
                    cut.append(f"{clip.name} (never heard to end)")
                    break
                whole = whole_clip_s(chat, clip.samples, gen, listen_first)
                warmed = True
                if r >= warmups:
                    speech = end_s - clip.lead / SAMPLE_RATE
                    out.append(LiveTurn(clip.clip_s, speech, gap, waited, whole, name=clip.name))
                    progress(f"{clip.name}: gap {gap:.2f} s ({waited:.2f} s waiting for silence), whole clip "
                             f"{whole:.2f} s")  # fmt: skip
    return out


def live_report(bundles: list, audio_seconds: str | None, repeats: int, tokens: int, threads: int, command: str,
                end_silence_ms: int | None = None, progress=print, baselines: bool = True,
                clips: Path | None = None) -> tuple[str, list[dict] | dict]:  # fmt: skip
    """``fa-edge bench --live``: the markdown report and the turns (clip lengths: LIVE_SECONDS unless given; the
    endpointer's end silence: the assistant's unless given; ``baselines`` False: no PyTorch bf16 run, which on a CPU
    without bf16 instructions takes minutes a turn for a 1B model; ``clips``: a manifest whose recordings are
    played instead of the spoken questions, each once, no PyTorch run: then the turns and the recordings left
    out)."""
    from falcon_audio_edge.apps.endpoint import EndpointSettings

    from falcon_audio_edge.bench.run import BenchSettings, machine, parse_seconds
    from falcon_audio_edge.runtime.bundle import read_bundle

    if len(bundles) != 1:
        raise FaEdgeError(f"--live measures one bundle; got {len(bundles)}")
    if clips is not None and audio_seconds:
        raise FaEdgeError("--clips plays its recordings; --audio-seconds asks for spoken questions: give one")
    seconds = parse_seconds(audio_seconds) if audio_seconds else LIVE_SECONDS
    settings = BenchSettings(seconds, repeats, 0, tokens, threads)  # validates them
    endpoint = EndpointSettings() if end_silence_ms is None else EndpointSettings(end_silence_ms=end_silence_ms)
    window_ms = read_bundle(bundles[0], verify=True).dims.audio.window_ms
    if clips is not None:
        played, cut = recordings(clips), []
        turns = live_turns(bundles[0], played, 1, tokens, settings.n_threads, endpoint, progress, cut)
        text = recordings_markdown(turns, cut, command, machine(), endpoint, window_ms)
        return text, {"turns": [asdict(t) for t in turns], "left_out": cut}
    asked = [Clip(f"{s:g} s", s, speech_clip(s).samples) for s in settings.seconds]
    turns = live_turns(bundles[0], asked, repeats, tokens, settings.n_threads, endpoint, progress)
    reference = (torch_turns(bundles[0], turns, repeats, tokens, settings.n_threads, progress) if baselines
                 else "PyTorch bf16: not measured (--no-baselines)")  # fmt: skip
    reference += f". Encoder windows of {window_ms / 1000:g} s, each fed as it ends"
    return markdown(turns, command, machine(), endpoint, reference), [asdict(t) for t in turns]


def torch_turns(bundle, turns: list[LiveTurn], repeats: int, tokens: int, threads: int, progress=print) -> str:
    """Each length's clip whole through the PyTorch reference of the bundle's checkpoint in bfloat16 (clip in hand
    -> first token, after one warm-up), set into ``turns``; what was measured, or why nothing was, in a line."""
    from falcon_audio_edge.runtime.bundle import read_bundle
    from falcon_audio_edge.settings import GenerationSettings

    bundle = read_bundle(bundle, verify=False)
    ckpt = bundle.manifest.get("source", {}).get("checkpoint")
    if bundle.has_answer_model:
        return (
            "PyTorch bf16: not measured (the bundle hears first, then its answer model answers: the reference has none)"
        )
    if not ckpt or not Path(ckpt).is_dir():
        return f"PyTorch bf16: not measured (the bundle's checkpoint {ckpt or '(none named)'} is not on this machine)"
    try:
        from falcon_audio_edge.reference import open_checkpoint
    except ImportError as exc:
        return f"PyTorch bf16: not measured ({exc}; pip install -e '.[export]')"
    with open_checkpoint(ckpt, threads, "bfloat16") as chat:
        gen = GenerationSettings(max_tokens=tokens, ignore_end_of_turn=True)
        for length in sorted({t.clip_s for t in turns}):
            clip = speech_clip(length).samples
            for r in range(repeats + 1):
                took = whole_clip_s(chat, clip, gen)
                if r:
                    same = [t for t in turns if t.clip_s == length][r - 1]
                    same.torch_bf16_s = took
                    progress(f"{length:g} s: PyTorch bf16 whole clip {took:.2f} s")
    return f"PyTorch bf16: the bundle's checkpoint ({ckpt}) through the PyTorch reference, greedy"


def markdown(turns: list[LiveTurn], command: str, machine: dict, endpoint, reference: str = "") -> str:
    by_len: dict[float, list[LiveTurn]] = {}
    for t in turns:
        by_len.setdefault(t.clip_s, []).append(t)
    lines = [
        "# Response gap", "",
        f"Produced by `{command}` on {dt.date.today().isoformat()} (rerun it to refresh). "
        f"Machine: {machine['cpu']}, {machine['usable_cores']} usable cores, bf16 instructions: "
        f"{machine.get('bf16', 'unknown')}. {machine.get('extra_bufts', '')}.",
        f"Endpoint: {endpoint.end_silence_ms} ms of silence ends a question; the rest of it is heard from "
        f"{endpoint.speculate_ms} ms of silence on. Medians of {len(next(iter(by_len.values())))} turns per length "
        f"(after one warm-up). {reference}.", "",
        "| question s | speech s | gap: end of speech → first token s | of it waiting for silence s | "
        "whole clip in hand → first token s | PyTorch bf16, whole clip s | PyTorch bf16 / whole clip |",
        "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    keys = ("speech_s", "gap_s", "endpoint_s", "whole_clip_s")
    for length, ts in sorted(by_len.items()):
        m = {k: statistics.median(asdict(t)[k] for t in ts) for k in keys}
        ref = [t.torch_bf16_s for t in ts if t.torch_bf16_s is not None]
        torch_s = f"{statistics.median(ref):.2f} | {statistics.median(ref) / m['whole_clip_s']:.2f}" if ref else "– | –"
        lines.append(f"| {length:g} | {m['speech_s']:.1f} | {m['gap_s']:.2f} | {m['endpoint_s']:.2f} | "
                     f"{m['whole_clip_s']:.2f} | {torch_s} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def recordings_markdown(turns: list[LiveTurn], cut: list[str], command: str, machine: dict, endpoint,
                        window_ms: int) -> str:  # fmt: skip
    """The report of ``--clips``: every recording's gap, shortest first, and the medians under and over LONG_S."""
    head = [
        "# Response gap on recordings", "",
        f"Produced by `{command}` on {dt.date.today().isoformat()} (rerun it to refresh). Machine: {machine['cpu']}, "
        f"{machine['usable_cores']} usable cores. {machine.get('extra_bufts', '')}.",
        f"Endpoint: {endpoint.end_silence_ms} ms of silence ends a question; the rest of it is heard from "
        f"{endpoint.speculate_ms} ms of silence on. Each recording played once at real time ({LEAD_S:g} s of silence "
        f"before it, {TAIL_S:g} s after it), after one warm-up turn; its speech ends at the last 32 ms frame the "
        f"endpointer (Silero VAD) hears as speech. Encoder windows of {window_ms / 1000:g} s.", "",
    ]  # fmt: skip
    lines = []
    for label, part in (
        ("under", [t for t in turns if t.clip_s < LONG_S]),
        ("at least", [t for t in turns if t.clip_s >= LONG_S]),
    ):
        if part:
            gaps = [t.gap_s for t in part]
            lines.append(f"- {len(part)} recordings {label} {LONG_S:g} s: median gap {statistics.median(gaps):.2f} s, "
                         f"longest {max(gaps):.2f} s")  # fmt: skip
    lines.append(
        f"- left out, ended by the endpointer in a pause of the speaker's or never heard: {', '.join(cut) or 'none'}"
    )
    table = ["", "| recording | length s | speech s | gap: end of speech → first token s | of it waiting for "
             "silence s | whole clip in hand → first token s |", "|---|---|---|---|---|---|"]  # fmt: skip
    for t in sorted(turns, key=lambda t: (t.clip_s, t.name)):
        table.append(f"| {t.name} | {t.clip_s:.1f} | {t.speech_s:.1f} | {t.gap_s:.2f} | {t.endpoint_s:.2f} | "
                     f"{t.whole_clip_s:.2f} |")  # fmt: skip
    return "\n".join(head + lines + table) + "\n"

"""How short the end-of-turn silence may be: each clip of a manifest (one utterance each) goes through the
assistant's endpointer (Silero VAD) with every ``end_silence_ms`` asked for; a clip heard as more than one
utterance was cut in a pause of the speaker's. Also how often the speculation starts and is dropped.

    python -m falcon_audio_edge.bench.pauses MANIFEST [MANIFEST ...] [--end-silence-ms 400 500 600 700] \\
        [--out docs/benchmarks-pauses.md]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

LEAD_S, TAIL_S = 0.5, 1.5  # silence around each clip: the endpointer starts and ends as it would live


@dataclass
class Replay:
    """A VAD that gives back probabilities computed once (the endpointer's ``vad``)."""

    probs: list[float]
    i: int = 0

    def __call__(self, frame: np.ndarray) -> float:
        self.i += 1
        return self.probs[self.i - 1]

    def reset(self) -> None:
        self.i = 0


@dataclass
class Counts:
    clips: int = 0
    cut: list[str] = field(default_factory=list)  # clips heard as two utterances or more
    unheard: list[str] = field(default_factory=list)  # clips with no utterance at all
    dropped: int = 0  # speculations started at a pause the speaker went on from (Resumed)


def speech_probs(samples: np.ndarray) -> list[float]:
    """Silero's speech probability for every 32 ms frame of ``samples`` with the silence around it."""
    from falcon_audio_edge.apps.endpoint import FRAME, SileroVAD

    from falcon_audio_edge.audio import SAMPLE_RATE

    audio = np.concatenate([np.zeros(int(LEAD_S * SAMPLE_RATE)), samples, np.zeros(int(TAIL_S * SAMPLE_RATE))])
    vad = SileroVAD()
    return [vad(audio[i : i + FRAME].astype(np.float32)) for i in range(0, len(audio) - FRAME + 1, FRAME)]


def replayed(probs: list[float], settings) -> list:
    """The events of an endpointer of ``settings`` over the frames whose speech probabilities are ``probs``."""
    from falcon_audio_edge.apps.endpoint import FRAME, Endpointer

    return list(Endpointer(settings, vad=Replay(probs)).feed(np.zeros(len(probs) * FRAME, dtype=np.float32)))


def count(probs: list[float], end_silence_ms: int, name: str, counts: Counts) -> None:
    """One clip through an endpointer of ``end_silence_ms``, its utterances and dropped speculations counted."""
    from falcon_audio_edge.apps.endpoint import EndpointSettings, Resumed, Utterance

    events = replayed(probs, EndpointSettings(end_silence_ms=end_silence_ms))
    utterances = sum(isinstance(e, Utterance) for e in events)
    counts.clips += 1
    counts.dropped += sum(isinstance(e, Resumed) for e in events)
    if utterances > 1:
        counts.cut.append(name)
    elif utterances == 0:
        counts.unheard.append(name)


def measure(manifests: list[Path], end_silences: list[int]) -> dict[int, Counts]:
    from falcon_audio_edge.audio import load_audio

    result = {ms: Counts() for ms in end_silences}
    for manifest in manifests:
        for line in manifest.read_text().splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            probs = speech_probs(load_audio(manifest.parent / row["audio"]).samples)
            for ms in end_silences:
                count(probs, ms, Path(row["audio"]).stem, result[ms])
    return result


def report(result: dict[int, Counts], command: str) -> str:
    from falcon_audio_edge.bench.run import machine

    m = machine()
    lines = [
        "# How short the end-of-turn silence may be", "",
        f"Produced by `{command}` on {m['cpu']}, {m['usable_cores']} cores. Each clip is one utterance, heard "
        f"through the assistant's endpointer (Silero VAD, its default settings but the end silence) with {LEAD_S:g} s "
        f"of silence before and {TAIL_S:g} s after; a clip heard as two utterances or more was cut in one of the "
        "speaker's pauses. Dropped speculations: pauses of 200 ms or more the speaker went on from, where the rest "
        "of the turn was started on and then dropped.", "",
        "| end silence ms | clips | cut | clips cut | not heard | dropped speculations |",
        "|---|---|---|---|---|---|",
    ]  # fmt: skip
    for ms, c in sorted(result.items()):
        lines.append(f"| {ms} | {c.clips} | {len(c.cut)} | {', '.join(c.cut) or '-'} | {len(c.unheard)} | "
                     f"{c.dropped} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    from falcon_audio_edge.apps.endpoint import EndpointSettings

    from falcon_audio_edge.errors import FaEdgeError
    from falcon_audio_edge.files import atomic_text

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifests", type=Path, nargs="+")
    ap.add_argument("--end-silence-ms", type=int, nargs="+", default=[400, 500, 600, 700])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    try:
        for ms in args.end_silence_ms:
            EndpointSettings(end_silence_ms=ms)  # a value the assistant refuses is refused here too
        missing = [str(m) for m in args.manifests if not m.is_file()]
        if missing:
            raise FaEdgeError(f"no such manifest: {', '.join(missing)}")
        result = measure(args.manifests, args.end_silence_ms)
    except (FaEdgeError, KeyError, json.JSONDecodeError) as exc:
        raise SystemExit(f"error: {exc}") from None
    command = "python -m falcon_audio_edge.bench.pauses " + " ".join(sys.argv[1:] if argv is None else argv)
    text = report(result, command)
    if args.out:
        atomic_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()

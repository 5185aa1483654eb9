"""Long use of one bundle in one process: many asks with conversation resets, resident memory and time per ask
at the start and at the end.

    python -m falcon_audio_edge.bench.soak BUNDLE [--asks 500] [--reset-every 4] [--max-tokens 16] \\
        [--audio WAV] [--listen-first] [--json]

Each ask answers the same clip (default: the packaged question); the conversation is reset every
``--reset-every`` asks, so the KV cache fills and empties as in an assistant's use. RSS (VmRSS) is read after
every ask; "first" and "last" are the medians over the first and last tenth of the asks (at least 3 each).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from falcon_audio_edge.errors import ConfigError, FaEdgeError


@dataclass(frozen=True)
class SoakResult:
    asks: int
    reset_every: int
    rss_first_mb: float
    rss_last_mb: float
    seconds_first: float  # per ask
    seconds_last: float

    @property
    def rss_growth(self) -> float:
        """Relative growth of resident memory from the first asks to the last."""
        return self.rss_last_mb / self.rss_first_mb - 1.0

    @property
    def time_drift(self) -> float:
        return self.seconds_last / self.seconds_first - 1.0

    def to_dict(self) -> dict:
        return {**asdict(self), "rss_growth": round(self.rss_growth, 4), "time_drift": round(self.time_drift, 4)}


def rss_mb() -> float:
    """This process's resident memory now (VmRSS), in MB."""
    from falcon_audio_edge.bench.worker import status_mb

    rss = status_mb("VmRSS")
    if rss is None:
        raise FaEdgeError("cannot read VmRSS from /proc/self/status (Linux only)")
    return rss


def soak(bundle: Path, asks: int, reset_every: int, max_tokens: int, audio=None, listen_first: bool = False,
         progress=None) -> SoakResult:  # fmt: skip
    from falcon_audio_edge.bench.clips import question_audio
    from falcon_audio_edge.runtime.backend import open_bundle
    from falcon_audio_edge.settings import GenerationSettings

    if asks < 6 or reset_every < 1 or max_tokens < 1:
        raise ConfigError(
            f"asks must be >= 6, reset_every and max_tokens >= 1; got {asks}, {reset_every}, {max_tokens}"
        )
    clip = audio if audio is not None else question_audio()
    gen = GenerationSettings(max_tokens=max_tokens, ignore_end_of_turn=True)
    rss, seconds = [], []
    with open_bundle(bundle) as chat:
        for i in range(asks):
            if i % reset_every == 0:
                chat.reset()
            t0 = time.perf_counter()
            chat.ask(clip, None, gen, listen_first=listen_first).run()
            seconds.append(time.perf_counter() - t0)
            rss.append(rss_mb())
            if progress and (i + 1) % max(1, asks // 10) == 0:
                progress(f"{i + 1}/{asks} asks, RSS {rss[-1]:.0f} MB, {seconds[-1]:.2f} s")
    n = max(3, asks // 10)
    return SoakResult(asks, reset_every, statistics.median(rss[:n]), statistics.median(rss[-n:]),
                      statistics.median(seconds[:n]), statistics.median(seconds[-n:]))  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    from falcon_audio_edge.audio import load_audio

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--asks", type=int, default=500)
    ap.add_argument("--reset-every", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--audio", type=Path, help="the clip asked each time (default: the packaged question)")
    ap.add_argument("--listen-first", action="store_true", help="listen-first turns (a bundle with answer.gguf)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    try:
        audio = load_audio(args.audio) if args.audio else None
        progress = None if args.json else lambda line: print(line, file=sys.stderr, flush=True)
        result = soak(args.bundle, args.asks, args.reset_every, args.max_tokens, audio, args.listen_first, progress)
    except FaEdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.json:
        print(json.dumps(result.to_dict()))
        return
    print(f"{result.asks} asks, reset every {result.reset_every}: RSS {result.rss_first_mb:.0f} -> "
          f"{result.rss_last_mb:.0f} MB ({result.rss_growth:+.1%}), time per ask {result.seconds_first:.3f} -> "
          f"{result.seconds_last:.3f} s ({result.time_drift:+.1%})")  # fmt: skip


if __name__ == "__main__":
    main()

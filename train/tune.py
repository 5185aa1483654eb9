"""Choose the transcription decoding settings on the dev split, through the exported bundle.

    python -m falcon_audio_edge.train.tune BUNDLE --dev DATA/dev/manifest.jsonl [--dev DATA/dev2/manifest.jsonl] \\
        --out work/tuning.md

Every CTC weight x beam size x proposal probability asked for transcribes the dev split's transcription clips
(sentences and voice variants of its own, never trained on, never the held-out test); the table gives the WER,
the share of clips transcribed word for word (what a listen-first answer needs) and the seconds per clip. With
``--dev`` given more than once the clips of every manifest are scored together (and each manifest's WER is shown
beside). The best setting by WER is what ``DEFAULT_CTC_WEIGHT`` (``DEFAULT_CTC_WEIGHT_WITH_CHARS`` beside a
character head),
``DEFAULT_CHAR_WEIGHT``, ``DEFAULT_BEAM_SIZE``, ``DEFAULT_PROPOSAL_PROB`` and
``DEFAULT_CTC_CANDIDATES`` (``--candidates``: the LLM's likeliest tokens each step rescores) should say; the
held-out split then measures it once.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from falcon_audio_edge.train.quality import TRANSCRIBE, read_rows, transcribe_all

from falcon_audio_edge.errors import ConfigError, FaEdgeError
from falcon_audio_edge.files import atomic_text
from falcon_audio_edge.runtime.backend import open_bundle
from falcon_audio_edge.settings import DEFAULT_CTC_CANDIDATES, GenerationSettings
from falcon_audio_edge.verify import exact_share, word_error_rate


@dataclass(frozen=True)
class Trial:
    ctc_weight: float
    char_weight: float  # the character head's (0: off)
    beam_size: int
    proposal_prob: float  # the CTC head's proposals (0: off)
    candidates: int  # the LLM's likeliest tokens rescored each step
    wer: float
    exact: float  # share of clips transcribed word for word
    seconds: float  # per clip
    parts: tuple[float, ...] = ()  # the WER of each dev manifest's clips, in the order given (with more than one)


def parse_list(text: str, kind: type, name: str) -> list:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise ConfigError(f"{name} must be a comma-separated list of {kind.__name__}s, got {text!r}") from exc
    if not values:
        raise ConfigError(f"{name} is empty")
    return values


def dev_list(dev: Path | list[Path]) -> list[Path]:
    """One dev manifest or several, as a list."""
    return [dev] if isinstance(dev, Path) else list(dev)


def dev_rows(devs: list[Path]) -> list[list[dict]]:
    """Each dev manifest's transcription rows, audio paths made absolute (the manifests may lie apart)."""
    out = []
    for dev in devs:
        rows = [r for r in read_rows(dev) if r.get("task") == "transcribe" and r.get("instruction") == TRANSCRIBE]
        if not rows:
            raise ConfigError(f"{dev} has no transcription rows ({TRANSCRIBE!r}) to tune on")
        out.append([{**r, "audio": str((dev.parent / r["audio"]).resolve())} for r in rows])
    return out


def part_wers(sizes: list[int], refs: list[str], hyps: list[str]) -> tuple[float, ...]:
    """The WER of each run of ``sizes`` consecutive clips."""
    out, start = [], 0
    for n in sizes:
        out.append(word_error_rate(refs[start : start + n], hyps[start : start + n]))
        start += n
    return tuple(out)


def run_trials(
    bundle: Path, dev: Path | list[Path], weights: list[float], beams: list[int], proposals: tuple[float, ...] = (0.0,),
    max_tokens: int = 64, char_weights: tuple[float, ...] = (0.0,),
    candidates: tuple[int, ...] = (DEFAULT_CTC_CANDIDATES,),
) -> list[Trial]:  # fmt: skip
    parts = dev_rows(dev_list(dev))
    rows = [r for part in parts for r in part]
    settings = [GenerationSettings(max_tokens=max_tokens, ctc_weight=w, char_weight=c, beam_size=b, ctc_proposal_prob=p,
                                   ctc_candidates=k)
                for w in weights for c in char_weights if not (w < 1 and c < 1 <= w + c)  # sums of 1: skipped
                for b in beams for p in proposals for k in candidates]  # fmt: skip
    if not settings:
        raise ConfigError(f"every CTC weight + character weight asked for ({weights} + {list(char_weights)}) "
                          "reaches 1: the LLM keeps none")  # fmt: skip
    refs = [r["text"] for r in rows]
    trials = []
    with open_bundle(bundle) as chat:
        if not chat.has_ctc_head:
            raise ConfigError(f"{bundle} has no CTC head: there is no CTC weight or beam to tune")
        if any(char_weights) and not chat.has_char_head:
            raise ConfigError(f"{bundle} has no character head: --char-weights must be 0")
        for gen in settings:
            hyps, seconds = transcribe_all(chat, rows, Path("/"), gen)  # the rows' audio paths are absolute
            wer, exact = word_error_rate(refs, hyps), exact_share(refs, hyps)
            each = part_wers([len(p) for p in parts], refs, hyps)
            trials.append(
                Trial(
                    gen.ctc_weight,
                    gen.char_weight,
                    gen.beam_size,
                    gen.ctc_proposal_prob,
                    gen.ctc_candidates,
                    wer,
                    exact,
                    seconds,
                    each if len(parts) > 1 else (),
                )  # fmt: skip
            )
    return trials


def best(trials: list[Trial]) -> Trial:
    """Lowest WER; a tie goes to more clips word for word, then to the faster setting."""
    return min(trials, key=lambda t: (round(t.wer, 6), -t.exact, t.seconds))


def markdown(trials: list[Trial], bundle: Path, dev: Path | list[Path], command: str) -> str:
    from falcon_audio_edge.bench.run import machine

    host, top = machine(), best(trials)
    devs = dev_list(dev)
    each = [f"WER on {d.parent.name}" for d in devs] if len(devs) > 1 else []
    lines = [
        "# Decoding settings chosen on the dev split",
        "",
        f"Bundle `{bundle}`, {'dev split' if len(devs) == 1 else 'dev splits'} `{'`, `'.join(map(str, devs))}` "
        "(sentences and voice variants of their own; never trained on).",
        f"Machine: {host['cpu']}, {host['cores']} cores, {host['memory_gib']} GiB, {platform.system()}.",
        f"Command: `{command}`",
        "",
        "WER after Whisper's English normalizer (case, punctuation, numbers, British and American spellings).",
        "",
        "| CTC weight | character head weight | beam size | CTC proposals (min prob) "
        "| LLM candidates | WER | "
        + "".join(f"{e} | " for e in each)
        + "transcribed word for word | seconds per clip |",
        "| --- " * (8 + len(each)) + "|",
    ]
    for t in trials:
        mark = " **best**" if t == top else ""
        lines.append(f"| {t.ctc_weight} | {t.char_weight or 'off'} | {t.beam_size} | {t.proposal_prob or 'off'} | "
                     f"{t.candidates} | {t.wer:.3f}{mark} | "
                     + "".join(f"{w:.3f} | " for w in t.parts) + f"{t.exact:.3f} | "
                     f"{t.seconds:.2f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--dev", type=Path, required=True, action="append",
                        help="a dev split's manifest (fa-edge synth --split dev); repeat for several")  # fmt: skip
    parser.add_argument("--weights", default="0.3,0.5,0.7,0.9", help="CTC weights to try, comma-separated")
    parser.add_argument("--beams", default="1,4", help="beam sizes to try, comma-separated")
    parser.add_argument("--char-weights", default="0", help="character head weights to try (0: off), comma-separated")
    parser.add_argument("--proposals", default="0", help="CTC proposal probabilities to try (0: off), comma-separated")
    parser.add_argument("--candidates", default=str(DEFAULT_CTC_CANDIDATES),
                        help="how many of the LLM's likeliest tokens each step rescores, comma-separated")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="markdown file to write (replaced whole)")
    parser.add_argument("--json", dest="as_json", action="store_true")
    args = parser.parse_args()
    try:
        for dev in args.dev:
            if not dev.is_file():
                raise ConfigError(f"dev manifest not found: {dev}")
        weights = parse_list(args.weights, float, "--weights")
        beams = parse_list(args.beams, int, "--beams")
        proposals = tuple(parse_list(args.proposals, float, "--proposals"))
        chars = tuple(parse_list(args.char_weights, float, "--char-weights"))
        candidates = tuple(parse_list(args.candidates, int, "--candidates"))
        trials = run_trials(args.bundle, args.dev, weights, beams, proposals, char_weights=chars,
                            candidates=candidates)  # fmt: skip
    except FaEdgeError as exc:
        parser.exit(2, f"error: {exc}\n")
    except (json.JSONDecodeError, KeyError) as exc:
        name = getattr(exc, "manifest", " or ".join(map(str, args.dev)))  # read_rows names the one it could not read
        parser.exit(2, f"error: {name} is not a manifest of the dev split: {exc!r}\n")
    command = "python -m falcon_audio_edge.train.tune " + shlex.join(sys.argv[1:])
    text = markdown(trials, args.bundle, args.dev, command)
    if args.out:
        atomic_text(args.out, text)
    print(json.dumps([t.__dict__ for t in trials], indent=2) if args.as_json else text)


if __name__ == "__main__":
    main()

"""How well a bundle hears voices close to people, beside Whisper tiny.en alone on the same clips.

    python -m falcon_audio_edge.train.hearing BUNDLE --split work/natural/dev/manifest.jsonl \\
        --split work/natural/heldout/manifest.jsonl --whisper WHISPER_CT2_DIR --out docs/quality.md

For each split and each voice family in it: transcription WER of the bundle's default decoding ("Transcribe the
audio.", as ``fa-edge ask --transcribe``), and of Whisper tiny.en (faster-whisper, int8, greedy with its
temperature fallback, seeded), with each one's seconds per clip on the same threads. Where the bundle has an
answer model, spoken-question agreement too: on the clips whose sentence is a question, the share whose default
answer (listen-first, as ``fa-edge ask`` answers speech) has the same words as the answer model's greedy answer to
the question typed as text. The splits' voices are in ``train/natural.py``; the held-out split's family is never
used in training or dev, and is the headline.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from falcon_audio_edge.errors import FaEdgeError
from falcon_audio_edge.files import atomic_text
from falcon_audio_edge.verify import exact_share, word_error_rate

ANSWER_TOKENS = 48  # an answer's first sentences: enough to tell two answers apart, short enough to run per clip


@dataclass
class Row:
    split: str
    family: str
    clips: int
    wer: float
    whisper_wer: float | None
    seconds: float  # per clip, the bundle
    whisper_seconds: float | None
    agreement: float | None = None  # spoken-question agreement over ``questions`` clips
    questions: int = 0
    phrases_wer: float | None = None  # heard in phrases, as the assistant hears (None: no answer model)


def family(voice: str) -> str:
    from falcon_audio_edge.train.natural import VOICES

    return next((v.family for v in VOICES if v.name == voice), voice)


def read_rows(manifest: Path) -> list[dict]:
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("task") == "transcribe" and r.get("text")]
    if not rows:
        raise FaEdgeError(f"{manifest}: no transcription rows")
    return rows


def bundle_transcripts(chat, clips: list[Path]) -> tuple[list[str], float]:
    from falcon_audio_edge.settings import TRANSCRIBE_PROMPT, GenerationSettings

    out = []
    gen = chat.with_weights(GenerationSettings(max_tokens=96, **chat.decoding.search()), TRANSCRIBE_PROMPT)  # its own
    t0 = time.perf_counter()
    for clip in clips:
        chat.reset()
        out.append(chat.ask(clip, TRANSCRIBE_PROMPT, gen).run().text)
    return out, (time.perf_counter() - t0) / len(clips)


def phrase_transcripts(chat, clips: list[Path]) -> list[str] | None:
    """Each clip's transcript as a listen-first turn hears it (the assistant's default: in phrases cut at its
    pauses, ``runtime/listen.py``); None where the bundle has no answer model (it does not listen first)."""
    from falcon_audio_edge.runtime.listen import Hearing
    from falcon_audio_edge.settings import GenerationSettings

    if chat.open_answerer is None:
        return None
    listen = chat.listening_for(GenerationSettings(**chat.decoding.search()))
    return [Hearing(chat, listen).finish(clip).transcript for clip in clips]


def question_agreement(chat, rows: list[dict], clips: list[Path]) -> dict[int, bool]:
    """{row index: the spoken question's default answer has the typed question's answer's words} for the rows
    whose sentence is a question; {} where the bundle has no answer model."""
    from falcon_audio_edge.settings import GenerationSettings

    asked = [i for i, r in enumerate(rows) if r["text"].rstrip().endswith("?")]
    same: dict[int, bool] = {}
    if chat.open_answerer is None:
        return same
    gen = GenerationSettings(max_tokens=ANSWER_TOKENS)
    for i in asked:
        chat.answerer().reset()
        typed = chat.answerer().ask(None, rows[i]["text"], gen).run().text
        chat.answerer().reset()
        spoken = chat.ask(clips[i], None, gen, listen_first=True).run().text
        same[i] = exact_share([typed], [spoken]) == 1.0
    return same


def whisper_transcripts(model_dir: Path, clips: list[Path], threads: int) -> tuple[list[str], float]:
    import ctranslate2
    from faster_whisper import WhisperModel

    ctranslate2.set_random_seed(0)
    model = WhisperModel(str(model_dir), device="cpu", compute_type="int8", cpu_threads=threads)
    out, t0 = [], time.perf_counter()
    for clip in clips:
        segments, _ = model.transcribe(str(clip), language="en", beam_size=1, vad_filter=False)
        out.append(" ".join(s.text.strip() for s in segments))
    return out, (time.perf_counter() - t0) / len(clips)


def evaluate(bundle: Path, splits: list[Path], whisper: Path | None, threads: int) -> dict:
    from falcon_audio_edge.runtime.backend import open_bundle
    from falcon_audio_edge.settings import RuntimeSettings

    result: dict = {"bundle": str(bundle), "threads": threads, "rows": [], "examples": []}
    read = [(manifest, read_rows(manifest)) for manifest in splits]  # every manifest checked before the bundle loads
    # Whisper first, before the bundle holds numpy's BLAS to one thread (runtime/blas.py): it runs as it would alone
    whispered = [whisper_transcripts(whisper, clips_of(m, rows), threads) if whisper else None for m, rows in read]
    with open_bundle(bundle, RuntimeSettings(threads=threads)) as chat:  # loaded and verified once for all splits
        for (manifest, rows), said in zip(read, whispered, strict=True):
            add_split(result, chat, manifest, rows, said)
    return result


def clips_of(manifest: Path, rows: list[dict]) -> list[Path]:
    return [manifest.parent / r["audio"] for r in rows]


def add_split(result: dict, chat, manifest: Path, rows: list[dict], whispered: tuple | None) -> None:
    """One split's rows per voice family, and its examples, into ``result`` (``whispered``: Whisper's transcripts
    of the rows and its seconds a clip, or None)."""
    clips = clips_of(manifest, rows)
    hyps, seconds = bundle_transcripts(chat, clips)
    phrased = phrase_transcripts(chat, clips)
    said, w_seconds = whispered if whispered else (None, None)
    agree = question_agreement(chat, rows, clips)
    name = manifest.parent.name
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(family(r.get("voice", "?")), []).append(i)
    groups["all"] = list(range(len(rows)))
    for fam, idx in groups.items():
        refs = [rows[i]["text"] for i in idx]
        asked = [agree[i] for i in idx if i in agree]
        result["rows"].append(Row(
            name, fam, len(idx), word_error_rate(refs, [hyps[i] for i in idx]),
            word_error_rate(refs, [said[i] for i in idx]) if said else None,
            seconds, w_seconds, sum(asked) / len(asked) if asked else None, len(asked),
            word_error_rate(refs, [phrased[i] for i in idx]) if phrased else None,
        ).__dict__)  # fmt: skip
    shown = range(0, len(rows), max(1, len(rows) // 4))
    result["examples"] += [{"split": name, "voice": rows[i]["voice"], "text": rows[i]["text"], "bundle": hyps[i],
                            "whisper": said[i] if said else None} for i in shown]  # fmt: skip


def fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def markdown(result: dict, command: str) -> str:
    lines = [
        "# How well the bundle hears voices close to people",
        "",
        f"Bundle `{result['bundle']}`. Transcription WER after Whisper's English normalizer, the bundle's default "
        "decoding beside Whisper tiny.en alone (faster-whisper, int8) on the same clips, and, with an answer "
        "model, heard in phrases as the assistant hears (runtime/listen.py; a clip of one phrase is heard whole); "
        "question agreement: the "
        "share of spoken questions whose default answer has the words of the answer model's answer to the question "
        "typed. Voices, licences and splits: docs/training.md; the held-out family is never trained or chosen on.",
        "",
        "| split | voice family | clips | bundle WER | in phrases | Whisper tiny.en WER | bundle s/clip "
        "| Whisper s/clip | question agreement (questions) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        name = f"**{r['family']}**" if r["family"] == "all" else r["family"]
        lines.append(f"| {r['split']} | {name} | {r['clips']} | {fmt(r['wer'])} | {fmt(r.get('phrases_wer'))} | "
                     f"{fmt(r['whisper_wer'])} | "
                     f"{fmt(r['seconds'], 2)} | {fmt(r['whisper_seconds'], 2)} | "
                     f"{fmt(r.get('agreement'), 2)} ({r.get('questions', 0)}) |")  # fmt: skip
    lines += ["", "Examples:", ""]
    for e in result["examples"]:
        lines.append(f"- {e['split']}, {e['voice']}: \"{e['text']}\" -> bundle \"{e['bundle']}\""
                     + (f", Whisper \"{e['whisper']}\"" if e["whisper"] is not None else ""))  # fmt: skip
    lines += ["", f"Command: `{command}`", "",
              f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"{result['threads']} threads; {time.strftime('%Y-%m-%d')}."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--split", type=Path, action="append", required=True, help="a manifest; may repeat")
    parser.add_argument("--whisper", type=Path, default=None, help="Whisper CTranslate2 folder for the baseline")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--out", type=Path, default=None, help="markdown file to write (replaced whole)")
    parser.add_argument("--json", dest="as_json", action="store_true")
    args = parser.parse_args(argv)
    for m in args.split:
        if not m.is_file():
            parser.exit(2, f"error: manifest not found: {m}\n")
    if args.whisper is not None and not (args.whisper / "model.bin").is_file():
        parser.exit(2, f"error: {args.whisper} is not a CTranslate2 Whisper folder (no model.bin)\n")
    try:
        result = evaluate(args.bundle, args.split, args.whisper, args.threads)
    except (FaEdgeError, json.JSONDecodeError) as exc:
        parser.exit(2, f"error: {exc}\n")
    command = "python -m falcon_audio_edge.train.hearing " + shlex.join(sys.argv[1:] if argv is None else argv)
    if args.out:
        atomic_text(args.out, markdown(result, command))
    print(json.dumps(result, indent=2) if args.as_json else markdown(result, command))


if __name__ == "__main__":
    main()

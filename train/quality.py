"""The quality report of a trained model, measured through its exported bundle (ONNX + GGUF, not PyTorch).

    python -m falcon_audio_edge.train.quality BUNDLE --heldout DATA/heldout/manifest.jsonl \\
        --whisper WHISPER_CT2_DIR --out docs/quality-espeak.md

On the held-out split (sentences and voices never seen in training):
- transcription WER with "Transcribe the audio.", decoded as ``fa-edge ask --transcribe`` does (greedy, guided
  by the model's CTC head when it has one; then also without the guidance), next to Whisper tiny.en's own WER
  on the same clips (faster-whisper, greedy with its temperature fallback, seeded, English);
- spoken-question agreement: how often the greedy answer to the spoken question is the same text as the
  original LLM's greedy answer to the question typed as text (the manifest's target, written by
  ``fa-edge synth`` with the LLM before any training: a LoRA-trained bundle's decoder is not the original
  LLM). Exact match after lower-casing and removing punctuation, a spoken answer that hit the token limit
  cut at its last full sentence as the targets are; first-sentence match and word-overlap F1 beside it.

``--other-engine DATA/heldout-flite/manifest.jsonl`` (made by ``python -m falcon_audio_edge.train.flite``; or
``heldout-festival``, by ``.festival``; the option may be given more than once) adds the transcription WER of the
same held-out sentences spoken by another speech engine's held-out voice, the bundle's default decoding next to
Whisper tiny.en's: whether the model hears speech or one synthesizer.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shlex
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from falcon_audio_edge.errors import FaEdgeError
from falcon_audio_edge.files import atomic_text
from falcon_audio_edge.runtime.backend import open_bundle
from falcon_audio_edge.runtime.bundle import read_bundle
from falcon_audio_edge.settings import (
    DEFAULT_BEAM_SIZE,
    TRANSCRIBE_PROMPT,
    GenerationSettings,
    ctc_weight_for,
)
from falcon_audio_edge.verify import exact_share, word_error_rate, words

TRANSCRIBE = TRANSCRIBE_PROMPT
TARGET_WER = 0.08  # the shipped model's targets: WER <= 8% and no worse than Whisper tiny.en alone,
TARGET_AGREEMENT = 0.80  # spoken-question agreement >= 80%


COMPARED_BEAM = 1 if DEFAULT_BEAM_SIZE > 1 else 4  # the other decoding the report measures next to the default


def targets(result: dict) -> list[str]:
    """Each target with its measured value and whether it is met."""

    def met(ok: bool) -> str:
        return "met" if ok else "**not met**"

    lines = [f"| WER <= {TARGET_WER:.2f} | {result['wer']:.3f} | {met(result['wer'] <= TARGET_WER)} |"]
    if "whisper_wer" in result:
        ok = result["wer"] <= result["whisper_wer"]
        lines.append(f"| WER <= Whisper tiny.en's | {result['wer']:.3f} vs {result['whisper_wer']:.3f} | {met(ok)} |")
    ok = result["agreement"] >= TARGET_AGREEMENT
    lines.append(f"| agreement >= {TARGET_AGREEMENT:.2f} | {result['agreement']:.3f} | {met(ok)} |")
    if "listen_first" in result:
        value = result["listen_first"]["agreement"]
        lines.append(
            f"| agreement >= {TARGET_AGREEMENT:.2f} (listen-first) | {value:.3f} | {met(value >= TARGET_AGREEMENT)} |"
        )
    return lines


def first_sentence(text: str) -> str:
    return re.split(r"(?<=[.!?])\s", text.strip(), maxsplit=1)[0]


def cut_like_target(text: str, hit_limit: bool) -> str:
    """A truncated answer cut at its last full sentence, as ``fa-edge synth`` cuts the targets."""
    return text[: text.rfind(".") + 1] if hit_limit and "." in text else text


def overlap_f1(a: str, b: str) -> float:
    wa, wb = Counter(words(a)), Counter(words(b))
    common = sum((wa & wb).values())
    if not common:
        return 0.0
    p, r = common / sum(wa.values()), common / sum(wb.values())
    return 2 * p * r / (p + r)


def whisper_transcripts(model_dir: Path, clips: list[Path], seed: int = 0) -> list[str]:
    """faster-whisper's default decoding (greedy, temperature fallback); the fallback samples, so it is seeded."""
    import ctranslate2
    from faster_whisper import WhisperModel

    ctranslate2.set_random_seed(seed)
    model = WhisperModel(str(model_dir), device="cpu", compute_type="float32")
    out = []
    for clip in clips:
        segments, _ = model.transcribe(str(clip), language="en", beam_size=1, vad_filter=False)
        out.append(" ".join(s.text.strip() for s in segments))
    return out


def transcribe_all(chat, rows: list[dict], base: Path, gen: GenerationSettings) -> tuple[list[str], float]:
    """Each clip transcribed in a fresh conversation; the seconds per clip."""
    hyps, t0 = [], time.perf_counter()
    for r in rows:
        chat.reset()
        hyps.append(chat.ask(base / r["audio"], TRANSCRIBE, gen).run().text)
    return hyps, (time.perf_counter() - t0) / max(1, len(rows))


def answer_text(turn_result, max_tokens: int) -> str:
    return cut_like_target(turn_result.text, len(turn_result.tokens) >= max_tokens)


def spoken_questions(chat, rows: list[dict], base: Path, gen: GenerationSettings, listen_first: bool = False) -> dict:
    """Each spoken question answered in a fresh conversation, against the original LLM's typed answer; with
    ``listen_first`` also the share of questions heard word for word (the transcript against the row's ``text``)."""
    exact = first = heard = 0
    f1, examples = [], []
    for r in rows:
        chat.reset()
        turn = chat.ask(base / r["audio"], None, gen, listen_first=listen_first).run()
        spoken, typed = answer_text(turn, gen.max_tokens), r["target"]
        heard += turn.transcript is not None and words(turn.transcript) == words(r.get("text") or "")
        exact += words(spoken) == words(typed)
        first += words(first_sentence(spoken)) == words(first_sentence(typed))
        f1.append(overlap_f1(spoken, typed))
        if len(examples) < 4:
            examples.append({"question": r["text"], "voice": r["voice"], "spoken": spoken, "typed": typed})
    n = max(1, len(rows))
    result = {"agreement": exact / n, "first_sentence_agreement": first / n, "mean_word_f1": sum(f1) / max(1, len(f1)),
              "examples": examples}  # fmt: skip
    return result | ({"heard_word_for_word": heard / n} if listen_first else {})


def typed_agreement(chat, rows: list[dict], gen: GenerationSettings, answer_model: bool = False) -> float | None:
    """The bundle's own decoder (``answer_model``: its answer model) answering each question typed (rows with their
    ``text``), against the original LLM's answer: the ceiling of the spoken (listen-first) agreement (a decoder
    whose weights moved, by LoRA or by another quantization, answers otherwise). None without any typed text."""
    typed = [r for r in rows if r.get("text")]
    ask = chat.answerer().ask if answer_model else chat.ask
    same = 0
    for r in typed:
        chat.reset()
        same += words(answer_text(ask(None, r["text"], gen).run(), gen.max_tokens)) == words(r["target"])
    return same / len(typed) if typed else None


def read_rows(manifest: Path) -> list[dict]:
    """A manifest's rows; a line that is not JSON raises JSONDecodeError with ``manifest`` on it."""
    try:
        return [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        exc.manifest = manifest
        raise


def other_engine(chat, manifest: Path, guided: GenerationSettings) -> tuple[dict, list[dict]]:
    """The transcription rows of ``manifest`` (another engine's voice): the default decoding's WER and word-for-word
    share, and the rows (for Whisper tiny.en's WER, which ``evaluate`` adds with one load of the model)."""
    trans = [r for r in read_rows(manifest) if r["task"] == "transcribe"]
    if not trans:
        raise FaEdgeError(f"--other-engine {manifest}: no transcription rows")
    refs = [r["text"] for r in trans]
    hyps, _ = transcribe_all(chat, trans, manifest.parent, guided)
    out = {"manifest": str(manifest), "clips": len(trans), "voices": sorted({r["voice"] for r in trans}),
           "wer": word_error_rate(refs, hyps), "exact": exact_share(refs, hyps)}  # fmt: skip
    return out, trans


def add_whisper(result: dict, whisper: Path, base: Path, trans: list[dict], others: list[tuple[dict, list]]) -> None:
    """Whisper tiny.en's WER on the held-out clips and on each other engine's clips (``other_engine``'s
    summaries and rows), with one load of the model; each summary gets its ``whisper_wer``."""
    sets = [(base, trans)] + [(Path(summary["manifest"]).parent, rows) for summary, rows in others]
    hyps = whisper_transcripts(whisper, [folder / r["audio"] for folder, rows in sets for r in rows])
    heard = []
    for _, rows in sets:
        heard.append(hyps[: len(rows)])
        hyps = hyps[len(rows) :]
    refs = [r["text"] for r in trans]
    result["whisper_wer"] = word_error_rate(refs, heard[0])
    result["whisper_wer_plain"] = word_error_rate(refs, heard[0], split=words)
    for (summary, rows), said in zip(others, heard[1:], strict=True):
        summary["whisper_wer"] = word_error_rate([r["text"] for r in rows], said)


def evaluate(
    bundle: Path, heldout: Path, whisper: Path | None, max_tokens: int = 64, others: tuple[Path, ...] = ()
) -> dict:
    rows = read_rows(heldout)
    base = heldout.parent
    gen = GenerationSettings(max_tokens=max_tokens)
    trans = [r for r in rows if r["task"] == "transcribe"]
    qa = [r for r in rows if r["task"] == "qa"]
    result: dict = {"bundle": str(bundle), "transcribe_clips": len(trans), "qa_clips": len(qa)}
    refs = [r["text"] for r in trans]
    with open_bundle(bundle) as chat:
        guided = chat.with_weights(gen, TRANSCRIBE)  # the model's defaults
        weight, chars = guided.ctc_weight, guided.char_weight
        hyps, seconds = transcribe_all(chat, trans, base, guided)
        result.update(wer=word_error_rate(refs, hyps), transcribe_s_per_clip=seconds)
        result["wer_plain"] = word_error_rate(refs, hyps, split=words)
        result["exact"] = exact_share(refs, hyps)
        if chars and weight:  # what the character head adds: the token head alone at its own default weight
            tokens_only, _ = transcribe_all(
                chat, trans, base, replace(gen, ctc_weight=ctc_weight_for(TRANSCRIBE, True))
            )
            result["wer_token_head_only"] = word_error_rate(refs, tokens_only)
        if weight:
            result.update(ctc_weight=weight, char_weight=chars, beam_size=gen.beam_size,
                          proposal_prob=gen.ctc_proposal_prob, candidates=gen.ctc_candidates)  # fmt: skip
            wide, wide_s = transcribe_all(chat, trans, base, replace(guided, beam_size=COMPARED_BEAM))
            result.update(wer_beam=word_error_rate(refs, wide), transcribe_s_per_clip_beam=wide_s)
            plain, _ = transcribe_all(chat, trans, base, gen)
            result["wer_without_ctc"] = word_error_rate(refs, plain)
        heard = [other_engine(chat, other, guided) for other in others]
        result["other_engines"] = [summary for summary, _ in heard]
        result.update(spoken_questions(chat, qa, base, gen))
        result["decoder_typed_agreement"] = typed_agreement(chat, qa, gen)
        if chat.open_answerer is not None:  # the bundle has an answer model: listen-first turns too
            result["listen_first"] = spoken_questions(chat, qa, base, gen, listen_first=True)
            result["listen_first"].pop("examples")
            result["listen_first"]["answer_model_typed_agreement"] = typed_agreement(chat, qa, gen, answer_model=True)
        result.update(
            transcripts=[
                {"text": r["text"], "voice": r["voice"], "bundle": h} for r, h in zip(trans[:6], hyps[:6], strict=True)
            ],
        )
    if whisper is not None:
        add_whisper(result, whisper, base, trans, heard)
    return result


def beam_seconds_row(result: dict) -> list[str]:
    if "transcribe_s_per_clip_beam" not in result:
        return []
    seconds = result["transcribe_s_per_clip_beam"]
    return [f"| seconds per transcription, `--beam-size {COMPARED_BEAM}` | {seconds:.2f} |"]


def listen_first_rows(result: dict) -> list[str]:
    if "listen_first" not in result:
        return []
    lf = result["listen_first"]
    return [
        f"| listen-first (`--listen-first`: heard, then answered by answer.gguf): agreement | {lf['agreement']:.3f} |",
        f"| listen-first: first-sentence agreement / mean word F1 | {lf['first_sentence_agreement']:.3f} / "
        f"{lf['mean_word_f1']:.3f} |",
        f"| listen-first: questions heard word for word | {lf['heard_word_for_word']:.3f} |",
        *([] if lf["answer_model_typed_agreement"] is None else [
            "| the answer model answering the question typed: agreement (the ceiling of listen-first) | "
            f"{lf['answer_model_typed_agreement']:.3f} |"]),
    ]  # fmt: skip


def other_engine_rows(result: dict) -> list[str]:
    lines = []
    for other in result.get("other_engines", []):
        spoken = f"the same sentences spoken by another engine's held-out voice ({', '.join(other['voices'])})"
        lines += [f"| transcription WER, {spoken}: the default decoding | {other['wer']:.3f} |",
                  f"| transcriptions word for word, {spoken} | {other['exact']:.3f} |"]  # fmt: skip
        if "whisper_wer" in other:
            lines.append(f"| transcription WER, {spoken}: Whisper tiny.en alone | {other['whisper_wer']:.3f} |")
    return lines


def markdown(result: dict, command: str) -> str:
    from falcon_audio_edge.bench.run import machine

    bundle = read_bundle(result["bundle"], verify=False)
    host = machine()
    lines = [
        "# Quality through the exported bundle",
        "",
        f"Bundle `{result['bundle']}` ({bundle.dims.name}; decoder {bundle.decoder_type}, encoder "
        f"{bundle.manifest['encoder']['dtype']}), held-out split: {result['transcribe_clips']} transcription "
        f"clips, {result['qa_clips']} spoken questions (sentences and voices never seen in training).",
        f"Machine: {host['cpu']}, {host['cores']} cores, {host['memory_gib']} GiB, {platform.system()}.",
        f"Command: `{command}`",
        "",
        "WER is scored as English WER usually is: both sides through Whisper's English normalizer (the "
        "`whisper-normalizer` package: case and punctuation dropped, numbers as digits, British spellings as "
        "American). The rows marked *plain* only lower-case and drop punctuation (`colour` vs `color` is an error).",
        "",
        "| measure | value |",
        "| --- | --- |",
    ]
    if "ctc_weight" in result:
        lines += [
            f"| transcription WER (bundle, CTC-guided, weight {result['ctc_weight']}"
            + (f", character head {result['char_weight']}" if result.get("char_weight") else "")
            + f", beam {result['beam_size']}, CTC proposals {result['proposal_prob'] or 'off'}"
            + (f", LLM candidates {result['candidates']}" if "candidates" in result else "")
            + f": the default) | {result['wer']:.3f} |",
            f"| transcription WER (bundle, CTC-guided, `--beam-size {COMPARED_BEAM}`) | {result['wer_beam']:.3f} |",
            f"| transcription WER (bundle, the LLM's greedy choices alone) | {result['wer_without_ctc']:.3f} |",
        ]
        if "wer_token_head_only" in result:
            alone = f"{result['wer_token_head_only']:.3f}"
            weight = ctc_weight_for(TRANSCRIBE, True)
            lines.insert(-2, f"| transcription WER (bundle, the token CTC head alone, weight {weight}: no character "
                             f"head) | {alone} |")  # fmt: skip
    else:
        lines.append(f"| transcription WER (bundle) | {result['wer']:.3f} |")
    lines.append(f"| transcription WER, plain (the default decoding) | {result['wer_plain']:.3f} |")
    lines.append(f"| transcriptions word for word (the default decoding) | {result['exact']:.3f} |")
    if "whisper_wer" in result:
        lines.append(f"| transcription WER (Whisper tiny.en alone, faster-whisper) | {result['whisper_wer']:.3f} |")
    if "whisper_wer_plain" in result:
        lines.append(f"| transcription WER, plain (Whisper tiny.en alone) | {result['whisper_wer_plain']:.3f} |")
    lines += other_engine_rows(result)
    lines += [
        f"| spoken-question agreement (exact answer match) | {result['agreement']:.3f} |",
        f"| first-sentence agreement | {result['first_sentence_agreement']:.3f} |",
        f"| mean word-overlap F1, spoken answer vs the LLM's typed answer | {result['mean_word_f1']:.3f} |",
        *listen_first_rows(result),
        f"| the bundle's decoder answering the question typed: agreement (the ceiling of the end-to-end agreement) | "
        f"{'n/a' if result['decoder_typed_agreement'] is None else format(result['decoder_typed_agreement'], '.3f')} |",
        f"| seconds per transcription (2 threads) | {result['transcribe_s_per_clip']:.2f} |",
        *beam_seconds_row(result),
        "",
        "| target | measured | |",
        "| --- | --- | --- |",
        *targets(result),
        "",
        "Examples (spoken question -> answer; the original LLM's answer to it typed):",
        "",
    ]
    for ex in result["examples"]:
        lines.append(f"- *{ex['question']}* ({ex['voice']})\n  - spoken: {ex['spoken']!r}\n  - typed: {ex['typed']!r}")
    lines += ["", "Transcripts:", ""]
    lines += [f"- {t['text']!r} ({t['voice']}) -> {t['bundle']!r}" for t in result["transcripts"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--heldout", type=Path, required=True)
    parser.add_argument("--whisper", type=Path, default=None, help="Whisper CTranslate2 folder for the baseline")
    parser.add_argument(
        "--other-engine",
        type=Path,
        action="append",
        default=[],
        help="the held-out split spoken by another engine (python -m falcon_audio_edge.train.flite or .festival); "
        "may be given more than once",
    )
    parser.add_argument("--out", type=Path, default=None, help="markdown file to write (replaced whole)")
    parser.add_argument("--json", dest="as_json", action="store_true")
    args = parser.parse_args()
    if not args.heldout.is_file():
        parser.exit(2, f"error: held-out manifest not found: {args.heldout}\n")
    for other in args.other_engine:
        if not other.is_file():
            parser.exit(2, f"error: --other-engine manifest not found: {other}\n")
    if args.whisper is not None and not (args.whisper / "model.bin").is_file():
        parser.exit(2, f"error: {args.whisper} is not a CTranslate2 Whisper folder (no model.bin)\n")
    try:
        result = evaluate(args.bundle, args.heldout, args.whisper, others=tuple(args.other_engine))
    except FaEdgeError as exc:
        parser.exit(2, f"error: {exc}\n")
    except json.JSONDecodeError as exc:
        parser.exit(2, f"error: {exc.manifest} is not a JSONL manifest: {exc}\n")
    command = "python -m falcon_audio_edge.train.quality " + shlex.join(sys.argv[1:])
    if args.out:
        atomic_text(args.out, markdown(result, command))
    print(json.dumps(result, indent=2) if args.as_json else markdown(result, command))


if __name__ == "__main__":
    main()

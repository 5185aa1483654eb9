"""The quantization table: every decoder x encoder type of one checkpoint, measured the same way.

    python -m falcon_audio_edge.quantize.report CHECKPOINT --out docs/quantization.md

For each combination: size on disk, encoder time for a 5 s clip, decode speed with the audio in the
context, and the distance from the PyTorch checkpoint (top-1 agreement, mean KL, greedy match; WER with a
transcription prompt). Times are medians of repeated runs after a warm-up, on this machine's threads.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np
from falcon_audio_edge.export.bundle import export_bundle

from falcon_audio_edge.audio import load_audio, log_mel_spectrogram
from falcon_audio_edge.checkpoint import read_dims
from falcon_audio_edge.files import atomic_text, temp_dir
from falcon_audio_edge.reference import open_checkpoint
from falcon_audio_edge.runtime.backend import open_bundle
from falcon_audio_edge.runtime.bundle import read_bundle
from falcon_audio_edge.runtime.engine import Timings
from falcon_audio_edge.settings import RuntimeSettings, default_threads
from falcon_audio_edge.verify import builtin_clips, compare

DECODERS = ("f16", "q8_0", "q5_k_m", "q4_k_m", "q4_0")
ENCODERS = ("fp32", "int8")


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def decode_tokens_per_s(chat, clip: Path, n_tokens: int, repeats: int) -> float:
    """Tokens/s feeding ``n_tokens`` one at a time after a prompt with audio (the decode loop's work)."""
    samples = load_audio(clip).samples

    def run() -> float:
        chat.reset()
        chat.prefill(samples, None, Timings())
        token = int(np.argmax(chat.backend.logits()))
        t0 = time.perf_counter()
        for _ in range(n_tokens):
            chat.backend.feed_tokens([token])
            token = int(np.argmax(chat.backend.logits()))
        return n_tokens / (time.perf_counter() - t0)

    run()
    return statistics.median(run() for _ in range(repeats))


def measure(ckpt: Path, work: Path, prompt: str | None, repeats: int) -> list[dict]:
    clips = builtin_clips(work, 5)
    paths, texts = [p for p, _ in clips], [t for _, t in clips]
    five_s = work / "five.wav"
    import soundfile as sf

    data = load_audio(paths[0]).samples
    sf.write(five_s, np.resize(data, 5 * 16000), 16000)
    mel5 = log_mel_spectrogram(load_audio(five_s).samples, read_dims(ckpt).encoder.n_mels)
    reference = open_checkpoint(ckpt)
    rows = []
    for dec in DECODERS:
        for enc in ENCODERS:
            out = export_bundle(ckpt, work / f"{dec}-{enc}", dec, enc, verify=False)
            with open_bundle(out, RuntimeSettings()) as chat:
                report = compare(chat, reference, paths, prompt, 32, texts)
                rows.append({
                    "decoder": dec, "encoder": enc, "mb": read_bundle(out).size_bytes / 1e6,
                    "encoder_ms": median_ms(lambda c=chat: c.backend.encode(mel5), repeats),
                    "tok_s": decode_tokens_per_s(chat, five_s, 32, repeats),
                    **report.to_dict(),
                })  # fmt: skip
            print(f"{dec}+{enc}: {rows[-1]}", flush=True)
    return rows


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def markdown(rows: list[dict], ckpt: Path, prompt: str | None, command: str) -> str:
    wer = any("wer" in r for r in rows)
    head = "| decoder | encoder | size MB | encoder ms (5 s) | decode tok/s | top-1 | mean KL | greedy match |"
    head += " WER bundle / ref |" if wer else ""
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in rows:
        line = (f"| {r['decoder']} | {r['encoder']} | {r['mb']:.1f} | {r['encoder_ms']:.1f} | {r['tok_s']:.1f} "
                f"| {r['top1_agreement']:.3f} | {r['mean_kl']:.5f} | {r['greedy_match_rate']:.2f} |")  # fmt: skip
        if wer:
            line += f" {r['wer']['bundle']:.3f} / {r['wer']['reference']:.3f} |"
        lines.append(line)
    dims = read_dims(ckpt)
    return "\n".join([
        f"Checkpoint `{ckpt}` ({dims.name}: encoder d={dims.encoder.d_model} x {dims.encoder.n_layers} layers, "
        f"decoder hidden={dims.decoder.hidden} x {dims.decoder.n_layers} layers, vocab {dims.decoder.vocab_size}); "
        f"prompt {prompt!r}; 5 built-in espeak-ng clips, 32 greedy tokens each, teacher-forced.",
        f"Machine: {cpu_name()} ({platform.machine()}), {default_threads()} threads, "
        f"{platform.system()} {platform.release()}.",
        f"Command: `{command}`",
        "",
        *lines,
        "",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="markdown file to write (replaced whole)")
    parser.add_argument("--prompt", default=None)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import shlex
    import sys

    command = "python -m falcon_audio_edge.quantize.report " + shlex.join(sys.argv[1:])
    with temp_dir() as work:
        rows = measure(args.checkpoint, Path(work), args.prompt, args.repeats)
    text = markdown(rows, args.checkpoint, args.prompt, command)
    atomic_text(args.out, text)  # never a partial file
    print(text)


if __name__ == "__main__":
    main()

"""Where a bundle's resident memory goes: peak RSS after imports, after loading and after one turn, for
several context sizes and batch sizes (each in its own process); with ``--listen-first``, beside each the peak of
the same turn heard first (the bundle's default transcription, then its answer model answering).

    python -m falcon_audio_edge.bench.memory BUNDLE [--n-ctx 4096 2048] [--n-batch 512 256] [--seconds 30] \\
        [--listen-first] [--out docs/benchmarks-memory.md]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

PROBE = """
import json, sys
from falcon_audio_edge.bench.clips import speech_clip
from falcon_audio_edge.bench.worker import peak_rss_mb
from falcon_audio_edge.runtime.backend import open_bundle
from falcon_audio_edge.settings import GenerationSettings, RuntimeSettings
bundle, n_ctx, n_batch, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
listen_first = sys.argv[5] == "listen-first"
out = {"imports_mb": peak_rss_mb()}
with open_bundle(bundle, RuntimeSettings(n_ctx=n_ctx, n_batch=n_batch, verify_checksums=False)) as chat:
    out["loaded_mb"] = peak_rss_mb()
    gen = GenerationSettings(max_tokens=16, ignore_end_of_turn=True)
    result = chat.ask(speech_clip(seconds), None, gen, listen_first=listen_first).run()
    out["peak_mb"] = peak_rss_mb()
    out["prefill_ms"] = result.timings.prefill_ms
print(json.dumps(out))
"""


def probe(bundle: Path, n_ctx: int, n_batch: int, seconds: float, mode: str = "plain") -> dict:
    cmd = [sys.executable, "-c", PROBE, str(bundle), str(n_ctx), str(n_batch), str(seconds), mode]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"error: probe failed for n_ctx={n_ctx} n_batch={n_batch}: {proc.stderr.strip()[-400:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    from falcon_audio_edge.bench.run import check_bundle, machine
    from falcon_audio_edge.files import atomic_text

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--n-ctx", type=int, nargs="+", default=[4096, 2048])
    ap.add_argument("--n-batch", type=int, nargs="+", default=[512, 256])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--listen-first", action="store_true", help="also the peak of the turn heard first")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    bundle = check_bundle(args.bundle)
    if args.listen_first and not bundle.has_answer_model:
        raise SystemExit(f"error: --listen-first needs a bundle with an answer model; {args.bundle} has none")
    size = bundle.size_bytes / 1e6
    m = machine()
    lines = [
        "# Memory of one bundle", "",
        f"Produced by `python -m falcon_audio_edge.bench.memory {' '.join(sys.argv[1:] if argv is None else argv)}`"
        f" on {m['cpu']}, {m['usable_cores']} cores, {m['memory_gib']} GiB.", "",
        f"Bundle {args.bundle.name}: {size:.0f} MB on disk. One turn: a {args.seconds:g} s clip, 16 tokens. "
        "Peak RSS (VmHWM) after importing the runtime, after loading the bundle, and after the turn"
        + (", and after the same turn heard first (listen-first: the bundle's default transcription, then the "
           "answer model), in a process of its own" if args.listen_first else "") + ".", "",
        "| n_ctx | n_batch | imports MB | loaded MB | peak MB | peak / disk | prefill ms |"
        + (" listen-first peak MB | listen-first / plain |" if args.listen_first else ""),
        "|---|---|---|---|---|---|---|" + ("---|---|" if args.listen_first else ""),
    ]  # fmt: skip
    for n_ctx in args.n_ctx:
        for n_batch in args.n_batch:
            r = probe(args.bundle, n_ctx, n_batch, args.seconds)
            line = (f"| {n_ctx} | {n_batch} | {r['imports_mb']:.0f} | {r['loaded_mb']:.0f} | {r['peak_mb']:.0f} | "
                    f"{r['peak_mb'] / size:.2f} | {r['prefill_ms']:.0f} |")  # fmt: skip
            if args.listen_first:
                first = probe(args.bundle, n_ctx, n_batch, args.seconds, "listen-first")["peak_mb"]
                line += f" {first:.0f} | {first / r['peak_mb']:.2f} |"
            lines.append(line)
    text = "\n".join(lines) + "\n"
    if args.out:
        atomic_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()

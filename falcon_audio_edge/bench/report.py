"""A benchmark report as markdown (tables, ratios against the baselines and the machine's limits) and a PNG.

Written atomically: a temporary file, renamed into place once complete.
"""

from __future__ import annotations

from pathlib import Path

from falcon_audio_edge.bench.limits import decode_ceiling_tok_s
from falcon_audio_edge.bench.run import BenchReport, Stat, TargetResult
from falcon_audio_edge.files import atomic_file

COLUMNS = [
    ("mel_ms", "log-mel ms"),
    ("encoder_ms", "encoder ms"),
    ("prefill_ms", "prefill ms"),
    ("first_token_ms", "first token ms"),
    ("decode_tok_s", "decode tok/s"),
    ("total_ms", "total ms"),
]
KIND_NOTE = {
    "bundle": "our runtime: onnxruntime encoder + llama.cpp decoder, audio embeddings injected",
    "torch": "PyTorch reference (transformers, eager) of the same checkpoint, same conversation loop",
    "llama_text": "llama-cpp-python's own generate loop on the same GGUF, a text prompt of the same length",
    "cascade": "faster-whisper (int8) transcribes (the encoder column is its whole transcription), then the same "
    "GGUF answers the transcript",
}


def fmt(stat: Stat | None, digits: int = 0) -> str:
    if stat is None:
        return "–"
    spread = f" ({stat.min:.{digits}f}–{stat.max:.{digits}f})" if stat.max - stat.min >= 10 ** (-digits) else ""
    return f"{stat.median:.{digits}f}{spread}"


def stage_table(results: list[TargetResult]) -> list[str]:
    head = "| configuration | clip s | " + " | ".join(name for _, name in COLUMNS) + " | peak RSS MB | disk MB |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 4)]
    for r in results:
        for seconds, stages in r.stages.items():
            cells = [fmt(stages.get(k), 1 if k == "decode_tok_s" else 0) for k, _ in COLUMNS]
            disk = f"{r.disk_mb:.0f}" if r.disk_mb else "–"
            tail = f" | {r.peak_rss_mb:.0f} | {disk} |"
            lines.append(f"| {r.label} | {float(seconds):g} | " + " | ".join(cells) + tail)
    return lines


def _median(r: TargetResult | None, seconds: str, key: str) -> float | None:
    if r is None or seconds not in r.stages or key not in r.stages[seconds]:
        return None
    return r.stages[seconds][key].median


def ratios(report: BenchReport) -> list[dict]:
    """Per bundle and clip length: speed-ups against each baseline and fractions of the machine's limits."""
    out = []
    by_kind = {k: [r for r in report.results if r.kind == k] for k in KIND_NOTE}
    for b in by_kind["bundle"]:
        torch = {r.label.rsplit(" ", 1)[-1]: r for r in by_kind["torch"] if r.checkpoint == b.checkpoint}
        text = next((r for r in by_kind["llama_text"] if r.gguf == b.gguf), None)
        cascade = next((r for r in by_kind["cascade"] if r.gguf == b.gguf), None)
        seconds = sorted(b.stages, key=float)
        longest = seconds[-1]
        for s in seconds:
            row = {"bundle": b.label, "seconds": float(s)}
            ttft = _median(b, s, "first_token_ms")
            for name, base in (("fp32", torch.get("fp32")), ("bf16", torch.get("bf16"))):
                ref = _median(base, s, "first_token_ms")
                row[f"first_token_vs_pytorch_{name}"] = ref / ttft if ref and ttft else None
            ref = _median(cascade, s, "first_token_ms")
            row["first_token_vs_cascade"] = ref / ttft if ref and ttft else None
            dec, text_dec = _median(b, s, "decode_tok_s"), _median(text, s, "decode_tok_s")
            row["decode_vs_llama_text"] = dec / text_dec if dec and text_dec else None
            enc, enc_long = _median(b, s, "encoder_ms"), _median(b, longest, "encoder_ms")
            row["encoder_vs_longest"] = enc / enc_long if enc and enc_long else None
            row["rss_vs_disk"] = b.peak_rss_mb / b.disk_mb if b.disk_mb else None
            ceiling = decode_ceiling_tok_s(b.weight_bytes, _limits(report)) if b.weight_bytes else None
            row["decode_vs_bandwidth_ceiling"] = dec / ceiling if dec and ceiling else None
            row["prefill_vs_gemm_peak"] = _prefill_fraction(b, s, report)
            out.append(row)
    return out


def _limits(report: BenchReport):
    from falcon_audio_edge.bench.limits import Limits

    return Limits(**report.limits)


def decoder_matmul_params(dims: dict) -> int:
    """Weights a prompt position multiplies through in the decoder (attention + MLP; no embedding/output)."""
    d = dims["decoder"]
    attn = d["hidden"] * d["head_dim"] * (2 * d["n_heads"] + 2 * d["n_kv_heads"])
    return d["n_layers"] * (attn + 3 * d["hidden"] * d["ffn_dim"])


def _prefill_fraction(b: TargetResult, seconds: str, report: BenchReport) -> float | None:
    ms, positions = _median(b, seconds, "prefill_ms"), b.prompt_positions.get(seconds)
    if not ms or not positions or not b.dims:
        return None
    gflops = 2 * decoder_matmul_params(b.dims) * positions / (ms / 1e3) / 1e9
    return gflops / report.limits["gemm_gflops_f32"]


def ratio_table(rows: list[dict]) -> list[str]:
    cols = [("first_token_vs_pytorch_fp32", "first token ×PyTorch fp32"),
            ("first_token_vs_pytorch_bf16", "×PyTorch bf16"), ("first_token_vs_cascade", "×cascade"),
            ("decode_vs_llama_text", "decode / llama.cpp text"), ("encoder_vs_longest", "encoder / longest clip"),
            ("rss_vs_disk", "peak RSS / disk"), ("decode_vs_bandwidth_ceiling", "decode / bandwidth ceiling"),
            ("prefill_vs_gemm_peak", "prefill / GEMM peak")]  # fmt: skip
    lines = ["| bundle | clip s | " + " | ".join(n for _, n in cols) + " |", "|" + "---|" * (len(cols) + 2)]
    for row in rows:
        cells = ["–" if row[k] is None else f"{row[k]:.2f}" for k, _ in cols]
        lines.append(f"| {row['bundle']} | {row['seconds']:g} | " + " | ".join(cells) + " |")
    return lines


def markdown(report: BenchReport, plot_name: str | None = None) -> str:
    m, lim, st = report.machine, report.limits, report.settings
    lines = [
        "# Benchmarks", "",
        f"Produced by `{report.command}` (nothing in this file is typed by hand; rerun it to refresh).", "",
        f"Machine: {m['cpu']}, {m['usable_cores']} usable cores of {m['cores']}, {m['memory_gib']} GiB, "
        f"Python {m['python']}. Threads: {st['threads'] or m['usable_cores']} for every target.",
        *([f"{m['extra_bufts']}."] if m.get("extra_bufts") else []),
        f"Limits: float32 GEMM {lim['gemm_gflops_f32']:.0f} GFLOP/s (n={lim['gemm_n']}, numpy BLAS); "
        f"memory read bandwidth {lim['bandwidth_gb_s']:.1f} GB/s ({lim['bandwidth_mb']} MB array).",
        f"Each clip length: {st['warmup']} warm-up turn(s), then {st['repeats']} measured; every turn generates "
        f"exactly {st['tokens']} tokens. Medians, with min–max in brackets. Clips are the packaged spoken question "
        "repeated to length.", "",
        "What each kind of row is:", "",
        *[f"- {k}: {v}" for k, v in KIND_NOTE.items()], "",
        "first token = end of speech (the whole clip in hand) → first generated token: log-mel + encoder + prefill "
        "+ the first decode step.", "",
        "## Stages", "", *stage_table(report.results), "",
        "## Ratios", "",
        "× columns: how many times faster our bundle reaches the first token. decode / llama.cpp text: our decode "
        "speed with injected audio over llama-cpp-python's own text decode of the same GGUF. Bandwidth ceiling: "
        "bandwidth ÷ GGUF bytes. GEMM peak: prefill FLOPs (2 × decoder matmul weights × positions) per second ÷ the "
        "float32 GEMM figure (quantized kernels use integer dot products, so this can exceed 1).", "",
        *ratio_table(ratios(report)), "",
    ]  # fmt: skip
    if plot_name:
        lines += ["## Stage breakdown", "", f"![stage breakdown]({plot_name})", ""]
    return "\n".join(lines) + "\n"


def plot(report: BenchReport, path: Path) -> None:
    """Stacked horizontal bars: log-mel, encoder, prefill, decode (ms) per configuration, one panel per clip."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seconds = sorted({s for r in report.results for s in r.stages}, key=float)
    fig, axes = plt.subplots(1, len(seconds), figsize=(6 * len(seconds), 0.45 * len(report.results) + 1.5),
                             sharey=True, squeeze=False)  # fmt: skip
    labels = [r.label for r in report.results]
    for ax, s in zip(axes[0], seconds, strict=True):
        left = [0.0] * len(labels)
        for key, name in (("mel_ms", "log-mel"), ("encoder_ms", "encoder"), ("prefill_ms", "prefill")):
            vals = [_median(r, s, key) or 0.0 for r in report.results]
            ax.barh(labels, vals, left=left, label=name)
            left = [a + b for a, b in zip(left, vals, strict=True)]
        decode = [(_median(r, s, "total_ms") or 0.0) - lf for r, lf in zip(report.results, left, strict=True)]
        ax.barh(labels, [max(0.0, d) for d in decode], left=left, label=f"decode ({report.settings['tokens']} tok)")
        ax.set_title(f"{float(s):g} s clip")
        ax.set_xlabel("ms (median)")
    axes[0][0].invert_yaxis()
    axes[0][-1].legend(loc="lower right")
    fig.tight_layout()
    atomic_file(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)

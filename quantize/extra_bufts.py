"""Prove llama.cpp's extra buffer types (AMX) on this CPU with this library, for every shipped quant type.

``python -m falcon_audio_edge.quantize.extra_bufts`` (scripts/setup.sh runs it after building llama-cpp-python)
writes one-layer decoders of each of PROBE_SHAPES (random weights) as f16, quantizes each to every type of
``DECODER_QUANTS``, and prefills the same 128 tokens with the extra buffers on and off, each check in a process of
its own (a crash there is a failed check, not a failed setup). A check passes when the logits of every position
correlate at >= MIN_CORRELATION and the top token agrees at >= MIN_TOP1 of the positions. The result is written
beside the library (``runtime.extra_bufts.PROOF_NAME``), keyed to the library's and the CPU's fingerprints; with
``FA_EDGE_EXTRA_BUFTS=auto`` the runtime turns the extra buffers on only where every check passed."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from falcon_audio_edge.quantize.decoder import DECODER_QUANTS, quantize_decoder

from falcon_audio_edge.errors import FaEdgeError
from falcon_audio_edge.runtime.extra_bufts import PROOF_NAME, cpu_fingerprint, library_dir, library_fingerprint

PROBE_TOKENS = 128
MIN_CORRELATION = 0.99
MIN_TOP1 = 0.9
CHECK_TIMEOUT_S = 300


# one-layer probes with the matrix shapes of the decoders this toolkit runs: (hidden, FFN, heads, KV heads, head dim)
PROBE_SHAPES = {
    "falcon3-1b": (2048, 8192, 8, 4, 256),
    "smollm2-135m": (576, 1536, 9, 3, 64),
    "test": (32, 64, 4, 2, 8),  # the decoder tests build
}


def probe_f16(folder: Path, shape: str) -> Path:
    """A one-layer decoder of one of PROBE_SHAPES with a 512-token vocab, written as an f16 GGUF."""
    import torch
    from falcon_audio_edge.export.gguf_decoder import write_gguf
    from transformers import LlamaForCausalLM

    from falcon_audio_edge.checkpoint import builtin_corpus
    from falcon_audio_edge.config import preset_dims
    from falcon_audio_edge.model import llama_config
    from falcon_audio_edge.tokenizer import train_bpe

    dims = preset_dims("falcon3-audio-1b")
    tokenizer = train_bpe(builtin_corpus(), 512, dims.prompt.chat_format, dims.tokenizer_pre)
    dims = dims.with_vocab(len(tokenizer))
    hidden, ffn, heads, kv_heads, head_dim = PROBE_SHAPES[shape]
    decoder = replace(dims.decoder, n_layers=1, max_positions=512, hidden=hidden, ffn_dim=ffn, n_heads=heads,
                      n_kv_heads=kv_heads, head_dim=head_dim)  # fmt: skip
    dims = replace(dims, decoder=decoder)
    torch.manual_seed(0)
    llm = LlamaForCausalLM(llama_config(dims.decoder)).eval()
    return write_gguf(llm, tokenizer, dims, folder / f"probe-{shape}-f16.gguf", "f16", "probe")


def prefill_logits(path: Path, extra_bufts: bool, threads: int) -> tuple[np.ndarray, float]:
    """Logits of every position of PROBE_TOKENS fixed tokens, and the prefill's milliseconds."""
    import llama_cpp as lc

    from falcon_audio_edge.runtime.decoder import silence_llama_logs

    silence_llama_logs(lc)
    lc.llama_backend_init()
    params = lc.llama_model_default_params()
    params.use_extra_bufts, params.n_gpu_layers = extra_bufts, 0
    model = lc.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise FaEdgeError(f"llama.cpp could not load {path}")
    cparams = lc.llama_context_default_params()
    cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = PROBE_TOKENS
    cparams.n_threads = cparams.n_threads_batch = threads
    ctx = lc.llama_init_from_model(model, cparams)
    n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(model))
    tokens = np.random.default_rng(0).integers(0, n_vocab, PROBE_TOKENS)
    batch = lc.llama_batch_init(PROBE_TOKENS, 0, 1)
    try:
        batch.n_tokens = PROBE_TOKENS
        for i, tok in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = int(tok), i, 1, 1
            batch.seq_id[i][0] = 0
        t0 = time.perf_counter()
        if lc.llama_decode(ctx, batch) != 0:
            raise FaEdgeError(f"llama_decode failed on {path}")
        ms = (time.perf_counter() - t0) * 1e3
        rows = np.ctypeslib.as_array(lc.llama_get_logits(ctx), shape=(PROBE_TOKENS, n_vocab)).copy()
    finally:
        lc.llama_batch_free(batch)
        lc.llama_free(ctx)
        lc.llama_model_free(model)
    return rows, ms


def compare(path: Path, threads: int) -> dict:
    """Extra buffers on against off on one GGUF: correlation, top-1 agreement, prefill milliseconds."""
    off, ms_off = prefill_logits(path, False, threads)
    prefill_logits(path, True, threads)  # warm-up: the first call repacks the weights
    on, ms_on = prefill_logits(path, True, threads)
    corr = float(min(np.corrcoef(a, b)[0, 1] for a, b in zip(on, off, strict=True)))
    top1 = float(np.mean(on.argmax(-1) == off.argmax(-1)))
    ok = bool(np.isfinite(on).all() and corr >= MIN_CORRELATION and top1 >= MIN_TOP1)
    return {"ok": ok, "min_correlation": round(corr, 5), "top1": round(top1, 4),
            "prefill_ms_off": round(ms_off, 1), "prefill_ms_on": round(ms_on, 1)}  # fmt: skip


def check_in_subprocess(path: Path, threads: int) -> dict:
    """``compare`` in a process of its own: a crash or a hang is a failed type, with its cause."""
    cmd = [sys.executable, "-m", "falcon_audio_edge.quantize.extra_bufts", "--check", str(path),
           "--threads", str(threads)]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=CHECK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"no result within {CHECK_TIMEOUT_S} s"}
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        return {"ok": False, "error": f"exit {proc.returncode}: {tail}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def prove(threads: int, out: Path | None = None, progress=print) -> Path:
    """Check every type of DECODER_QUANTS and write the proof (beside the library unless ``out`` is given)."""
    lib = library_dir()
    if lib is None or not lib.is_dir():
        raise FaEdgeError("llama-cpp-python is not installed (its libraries were not found)")
    types = {}
    with tempfile.TemporaryDirectory(prefix="fa-edge-bufts-") as tmp:
        for shape in PROBE_SHAPES:
            f16 = probe_f16(Path(tmp), shape)
            for qtype in DECODER_QUANTS:
                path = f16 if qtype == "f16" else f16.with_name(f"probe-{shape}-{qtype}.gguf")
                if qtype != "f16":
                    quantize_decoder(f16, path, qtype, "f16", allow_requantize=False, threads=threads)
                key = f"{qtype} ({shape})"
                types[key] = check_in_subprocess(path, threads)
                progress(f"{key}: {json.dumps(types[key])}")
    proof = {"library": library_fingerprint(lib), "cpu": cpu_fingerprint(), "types": types,
             "date": dt.date.today().isoformat(), "threads": threads}  # fmt: skip
    out = out or lib / PROOF_NAME
    tmp_out = out.with_suffix(".tmp")
    tmp_out.write_text(json.dumps(proof, indent=2) + "\n")
    os.replace(tmp_out, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--check", type=Path, help="(internal) compare one GGUF and print the result as JSON")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    try:
        if args.check:
            print(json.dumps(compare(args.check, args.threads)))
            return 0
        out = prove(args.threads)
    except FaEdgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from falcon_audio_edge.runtime import extra_bufts

    extra_bufts._decision.cache_clear()
    print(f"{extra_bufts.decision().line()} (proof: {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One benchmark target in its own process (so its peak RSS is its own): JSON spec on stdin, JSON on stdout.

    python -m falcon_audio_edge.bench.worker < spec.json

Kinds: ``bundle`` (onnxruntime + llama.cpp, our runtime), ``torch`` (the PyTorch reference of a checkpoint,
float32 or bfloat16, the same conversation loop), ``llama_text`` (llama-cpp-python's own generate loop on
the same GGUF, a text prompt as long as the audio prompt: the decode ceiling) and ``cascade`` (faster-whisper
transcribes, then the same GGUF answers the transcript through llama-cpp-python).
Every turn generates exactly ``tokens`` tokens (end of turn ignored), so all targets do the same work.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

from falcon_audio_edge.bench.clips import speech_clip


def status_mb(field: str) -> float | None:
    """A memory field of /proc/self/status (VmRSS, VmHWM, ...) in MB; None where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """This process's own peak resident memory. VmHWM starts afresh at exec; ru_maxrss would carry the
    parent's peak over from the fork."""
    peak = status_mb("VmHWM")
    if peak is not None:
        return peak
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux (may include the parent's)


def chat_target(spec: dict) -> dict:
    """A bundle or a checkpoint through AudioChat: every stage of every turn."""
    from falcon_audio_edge.settings import GenerationSettings, RuntimeSettings

    if spec["kind"] == "bundle":
        from falcon_audio_edge.runtime.backend import open_bundle

        chat = open_bundle(spec["path"], RuntimeSettings(threads=spec["threads"], verify_checksums=False))
    else:
        from falcon_audio_edge.reference import open_checkpoint

        chat = open_checkpoint(spec["path"], spec["threads"], spec.get("dtype", "float32"))
    gen = GenerationSettings(max_tokens=spec["tokens"], ignore_end_of_turn=True, **chat.decoding.search())
    runs: dict[str, list[dict]] = {}
    with chat:
        for seconds in spec["seconds"]:
            clip = speech_clip(seconds)
            for i in range(spec["warmup"] + spec["repeats"]):
                chat.reset()
                result = chat.ask(clip, spec["prompt"], gen).run()
                if i >= spec["warmup"]:
                    t = result.timings
                    runs.setdefault(str(seconds), []).append({
                        "mel_ms": t.mel_ms, "encoder_ms": t.encoder_ms, "prefill_ms": t.prefill_ms,
                        "first_token_ms": t.first_token_ms, "decode_tok_s": t.tokens_per_s, "total_ms": t.total_ms,
                        "prompt_positions": result.audio_tokens + result.prompt_tokens,
                        "audio_tokens": result.audio_tokens, "generated": len(result.tokens),
                    })  # fmt: skip
        load_ms = chat.load_ms
    return {"runs": runs, "load_ms": load_ms}


def _llama(gguf: str, threads: int, n_ctx: int = 4096):
    """llama-cpp-python's high-level Llama, llama.cpp's extra (AMX) buffer types on or off as the bundle runtime
    decides (``runtime.extra_bufts``; this process exists only for this target)."""
    import llama_cpp
    import llama_cpp.llama_cpp as lc

    from falcon_audio_edge.runtime.decoder import silence_llama_logs
    from falcon_audio_edge.runtime.extra_bufts import decision

    silence_llama_logs(lc)
    original, extra = lc.llama_model_default_params, decision().on

    def params():
        p = original()
        p.use_extra_bufts = extra
        return p

    lc.llama_model_default_params = params
    try:
        return llama_cpp.Llama(gguf, n_ctx=n_ctx, n_batch=512, n_threads=threads, n_threads_batch=threads,
                               verbose=False)  # fmt: skip
    finally:
        lc.llama_model_default_params = original


def _generate(llm, prompt_ids: list[int], tokens: int) -> dict:
    """Prompt in, exactly ``tokens`` greedy tokens out (llama-cpp-python's own loop and sampler)."""
    llm.reset()
    t0 = time.perf_counter()
    first = None
    for n, _ in enumerate(llm.generate(prompt_ids, temp=0.0, reset=True), 1):
        if first is None:
            first = time.perf_counter()
        if n == tokens:
            break
    end = time.perf_counter()
    return {"prefill_ms": (first - t0) * 1e3, "decode_tok_s": (tokens - 1) / (end - first) if tokens > 1 else 0.0,
            "total_ms": (end - t0) * 1e3}  # fmt: skip


def llama_text_target(spec: dict) -> dict:
    """Text prompts as long as the bundle's audio prompts (``positions`` per clip length)."""
    llm = _llama(spec["gguf"], spec["threads"])
    filler = llm.tokenize(b" The quick brown fox jumps over the lazy dog.", add_bos=False)
    runs: dict[str, list[dict]] = {}
    for seconds in spec["seconds"]:
        n = spec["positions"][str(seconds)]
        prompt = (filler * (n // len(filler) + 1))[:n]
        for i in range(spec["warmup"] + spec["repeats"]):
            out = _generate(llm, prompt, spec["tokens"])
            out["first_token_ms"] = out["prefill_ms"]
            if i >= spec["warmup"]:
                runs.setdefault(str(seconds), []).append(out)
    return {"runs": runs, "load_ms": 0.0}


def cascade_target(spec: dict) -> dict:
    """Speech to text with faster-whisper, then the transcript answered by the same GGUF as text."""
    from faster_whisper import WhisperModel

    from falcon_audio_edge.config import ModelDims

    stt = WhisperModel(spec["whisper"], device="cpu", compute_type=spec.get("compute_type", "int8"),
                       cpu_threads=spec["threads"])  # fmt: skip
    llm = _llama(spec["gguf"], spec["threads"])
    layout = ModelDims.from_dict(spec["dims"]).prompt
    runs: dict[str, list[dict]] = {}
    for seconds in spec["seconds"]:
        clip = speech_clip(seconds)
        for i in range(spec["warmup"] + spec["repeats"]):
            t0 = time.perf_counter()
            segments, _ = stt.transcribe(clip.samples, language="en", beam_size=1, vad_filter=False)
            text = " ".join(s.text.strip() for s in segments)
            stt_ms = (time.perf_counter() - t0) * 1e3
            ids = llm.tokenize(layout.text_turn(text).encode(), add_bos=layout.add_bos, special=True)
            out = _generate(llm, ids, spec["tokens"])
            out.update(encoder_ms=stt_ms, first_token_ms=stt_ms + out["prefill_ms"], total_ms=stt_ms + out["total_ms"])
            if i >= spec["warmup"]:
                runs.setdefault(str(seconds), []).append(out)
    return {"runs": runs, "load_ms": 0.0}


KINDS = {"bundle": chat_target, "torch": chat_target, "llama_text": llama_text_target, "cascade": cascade_target}


def main() -> None:
    spec = json.loads(sys.stdin.read())
    out = KINDS[spec["kind"]](spec)
    out["peak_rss_mb"] = peak_rss_mb()
    out["label"] = spec["label"]
    sys.stdout.write("\n" + json.dumps(out) + "\n")


if __name__ == "__main__":
    main()

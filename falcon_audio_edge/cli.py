"""``fa-edge``: the command line. It only builds settings and calls the library.

Bad input ends in one line on stderr (``error: ...``) and exit code 2.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from falcon_audio_edge import cli_data
from falcon_audio_edge.audio import SEGMENT_SECONDS
from falcon_audio_edge.cli_turn import (
    DECODING_HELP,
    LISTEN_HELP,
    checked_prompt,
    listens_first,
    open_chat,
    read_decoding,
    say_heard,
    turn_settings,
)
from falcon_audio_edge.console import printable
from falcon_audio_edge.errors import FaEdgeError
from falcon_audio_edge.settings import (
    TRANSCRIBE_PROMPT,
    GenerationSettings,
    RuntimeSettings,
)

END_SILENCE_HELP = ("milliseconds of silence that end your turn (default 700): less answers sooner, but a "
                    "pause that long mid-sentence ends the question there")  # fmt: skip
app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, help=__doc__.splitlines()[0]
)


@app.command()
def init(
    out: Annotated[Path, typer.Option("-o", "--out", help="checkpoint folder to write")],
    preset: Annotated[str, typer.Option(help="tiny | falcon3-audio-1b")] = "tiny",
    encoder: Annotated[str | None, typer.Option(help="encoder preset (whisper-small, ...) or Whisper folder")] = None,
    llm: Annotated[Path | None, typer.Option(help="pretrained Llama-architecture LLM: HF folder or .gguf")] = None,
    pool_factor: Annotated[int, typer.Option(help="encoder frames stacked per audio token")] = 2,
    connector: Annotated[str, typer.Option(help="linear | mlp")] = "mlp",
    pad_to_30s: Annotated[bool, typer.Option(help="encode every window padded to 30 s")] = False,
    window_ms: Annotated[
        int, typer.Option(help="encoder window: under 30000, each window is heard (and fed) as soon as it is over")
    ] = 30000,
    name: Annotated[str | None, typer.Option(help="model name stored in the dims (default: the preset's)")] = None,
    seed: int = 0,
    force: Annotated[bool, typer.Option(help="replace a non-empty output folder")] = False,
) -> None:
    """Write a checkpoint of a named preset: random weights, or a pretrained LLM with --llm."""
    from falcon_audio_edge.checkpoint import init_checkpoint

    path = init_checkpoint(
        preset, out, encoder=encoder, llm=llm, seed=seed, force=force, name=name,
        pool_factor=pool_factor, connector=connector, pad_to_30s=pad_to_30s, window_ms=window_ms,
    )  # fmt: skip
    typer.echo(f"wrote checkpoint {path}")


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Argument(help="checkpoint folder")],
    out: Annotated[Path, typer.Option("-o", "--out", help="bundle folder to write")],
    decoder_type: Annotated[
        str | None, typer.Option(help="f32 | f16 | q8_0 | q5_k_m | q4_k_m | q4_0 | q4_1 (default f16; not with a base)")
    ] = None,
    encoder_type: Annotated[str, typer.Option(help="fp32 | fp16 | int8")] = "fp32",
    verify: Annotated[bool, typer.Option(help="measure the bundle against the checkpoint, into the manifest")] = True,
    force: Annotated[bool, typer.Option(help="replace a non-empty output folder")] = False,
    answer_llm: Annotated[
        Path | None,
        typer.Option(
            help="GGUF of the text LLM the model was built from: answers --listen-first turns; with a "
            "checkpoint that keeps its LoRA adapters, the bundle's one decoder (adapters in adapter.gguf)"
        ),
    ] = None,
    decoding: Annotated[
        Path | None,
        typer.Option(
            help="the bundle's own transcription search settings (as ask --decoding)", metavar="FILE.json"
        ),  # fmt: skip
    ] = None,
) -> None:
    """Export a checkpoint to a bundle: encoder.onnx + decoder.gguf + manifest.json."""
    from falcon_audio_edge.export.bundle import export_bundle

    path = export_bundle(checkpoint, out, decoder_type, encoder_type, force=force, verify=verify, answer_llm=answer_llm,
                         decoding=read_decoding(decoding))  # fmt: skip
    typer.echo(f"wrote bundle {path}")


@app.command()
def quantize(
    bundle: Annotated[Path, typer.Argument(help="bundle folder (f16/f32 decoder, fp32 encoder)")],
    out: Annotated[Path, typer.Option("-o", "--out", help="new bundle folder to write")],
    decoder: Annotated[
        str | None, typer.Option(help="q8_0 | q5_k_m | q4_k_m | q4_0 | q4_1 | f16 (default q8_0; kept: base + adapter)")
    ] = None,
    encoder: Annotated[str, typer.Option(help="int8 | fp16 | fp32")] = "int8",
    reference: Annotated[Path | None, typer.Option(help="checkpoint to verify against (default: the source's)")] = None,
    verify: Annotated[bool, typer.Option(help="measure the new bundle against the checkpoint")] = True,
    allow_requantize: Annotated[bool, typer.Option(help="quantize an already-quantized decoder")] = False,
    f16_embeddings: Annotated[bool | None, typer.Option(help="token embedding + output at f16 (default: q8_0)")] = None,
    force: Annotated[bool, typer.Option(help="replace a non-empty output folder")] = False,
) -> None:
    """Write a quantized copy of a bundle (llama.cpp quantizer for the decoder, onnxruntime for the encoder)."""
    from falcon_audio_edge.quantize.bundle import quantize_bundle

    path = quantize_bundle(bundle, out, decoder, encoder, allow_requantize, force, reference, verify, f16_embeddings)
    typer.echo(f"wrote bundle {path}")


@app.command(name="verify")
def verify_cmd(
    bundle: Annotated[Path, typer.Argument(help="bundle folder")],
    reference: Annotated[Path, typer.Option(help="the PyTorch checkpoint the bundle came from")],
    audio: Annotated[
        list[Path] | None, typer.Option(help="clips to compare on (default: built-in espeak clips)")
    ] = None,
    prompt: Annotated[str | None, typer.Option(help="prompt for every clip; a transcription prompt adds WER")] = None,
    max_tokens: int = 32,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Compare a bundle with its PyTorch checkpoint: encoder cosine, top-1 agreement, KL, greedy match."""
    from falcon_audio_edge.verify import verify_bundle

    report = verify_bundle(bundle, reference, audio or None, prompt, max_tokens).to_dict()
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        typer.echo("\n".join(f"{k:22s} {v}" for k, v in report.items()))


cli_data.register(app)


@app.command()
def demo(
    audio: Annotated[Path | None, typer.Option(help="question WAV (default: the one shipped in the package)")] = None,
    prompt: Annotated[str | None, typer.Option(help='e.g. "Transcribe the audio."; none: answer the speech')] = None,
    max_tokens: int = 128,
    transcribe: Annotated[bool, typer.Option(help=f'same as --prompt "{TRANSCRIBE_PROMPT}"')] = False,
    listen_first: Annotated[bool | None, typer.Option("--listen-first/--no-listen-first", help=LISTEN_HELP)] = None,
    rebuild: Annotated[bool, typer.Option(help="rebuild the checkpoint and bundle")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    decoding: Annotated[Path | None, typer.Option(help=DECODING_HELP, metavar="FILE.json")] = None,
) -> None:
    """The shipped tiny model (Whisper tiny.en + SmolLM2-135M + trained connector) answering a spoken question."""
    from falcon_audio_edge import demo as d
    from falcon_audio_edge.audio import load_audio
    from falcon_audio_edge.runtime.backend import open_bundle

    wav = audio or d.DEMO_QUESTION
    load_audio(wav)  # a bad --audio or setting is an error before minutes of building, not after
    prompt = checked_prompt(prompt, transcribe, listen_first)
    generation, search = GenerationSettings(max_tokens=max_tokens), read_decoding(decoding)
    if not as_json:
        typer.echo(f"demo model under {d.home() / 'demo'} (built on the first run, then reused)", err=True)
    paths = d.prepare(rebuild)
    with open_bundle(paths.bundle) as chat:
        listen_first = listens_first(listen_first, prompt, chat)
        generation, listening = turn_settings(generation, prompt, chat, search, listen_first)
        turn = chat.ask(wav, prompt, generation, listen_first=listen_first, listening=listening)
        for piece in turn:
            if not as_json:
                typer.echo(printable(piece), nl=False)
    if as_json:
        extra = {"timings": turn.result.to_dict()["timings"]}
        if turn.result.transcript is not None:
            extra["transcript"] = turn.result.transcript
        typer.echo(d.to_json(paths, wav, turn.result.text.strip(), extra))
    else:
        typer.echo("")
        say_heard(turn.result)


@app.command()
def bench(
    bundles: Annotated[list[Path] | None, typer.Argument(help="bundles to measure (or --suite)")] = None,
    suite: Annotated[str | None, typer.Option(help="build and measure a suite: standard | tiny | 1b")] = None,
    audio_seconds: Annotated[
        str | None, typer.Option(help="clip lengths, comma-separated (each <= 30; default 5,15,30, --live 3,8,20)")
    ] = None,
    repeats: int = 3,
    warmup: int = 1,
    tokens: Annotated[int, typer.Option(help="tokens generated per turn (end of turn ignored)")] = 32,
    threads: Annotated[int, typer.Option(help="threads for every target (0 = all usable cores)")] = 0,
    baselines: Annotated[
        bool, typer.Option(help="PyTorch, llama.cpp text and cascade baselines (--live: PyTorch bf16)")
    ] = True,
    whisper: Annotated[Path | None, typer.Option(help="CTranslate2 Whisper folder for the cascade baseline")] = None,
    out: Annotated[Path | None, typer.Option(help="write the markdown report here (e.g. docs/benchmarks.md)")] = None,
    plot: Annotated[Path | None, typer.Option(help="write the stage-breakdown PNG here")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the full report as JSON")] = False,
    live: Annotated[
        bool,
        typer.Option(
            "--live",
            help="play each clip at real time through the assistant's "
            "pipeline: the gap from the end of speech to the first token",
        ),
    ] = False,
    end_silence_ms: Annotated[int | None, typer.Option(help=f"--live: {END_SILENCE_HELP}")] = None,
    clips: Annotated[
        Path | None,
        typer.Option(
            help='--live: play the recordings of this manifest (JSONL rows with "audio"), each once (no --repeats, '
            "no PyTorch run)",
            metavar="MANIFEST",
        ),
    ] = None,
) -> None:
    """Where the time and memory go: every stage per clip length, against the baselines, in one run."""
    if live:
        if suite:
            raise FaEdgeError(f"--live measures one bundle you name; --suite {suite} is for the stage benchmark")
        return _bench_live(bundles or [], audio_seconds, repeats, tokens, threads, out, as_json, end_silence_ms,
                           baselines, clips)  # fmt: skip
    if clips is not None:
        raise FaEdgeError("--clips is for --live (the response gap on recordings)")
    from falcon_audio_edge.bench.report import markdown
    from falcon_audio_edge.bench.report import plot as write_plot
    from falcon_audio_edge.bench.run import BenchSettings, parse_seconds, run_bench
    from falcon_audio_edge.files import atomic_text

    settings = BenchSettings(
        parse_seconds(audio_seconds or "5,15,30"), repeats, warmup, tokens, threads, baselines=baselines
    )
    paths, cascade = list(bundles or []), None
    if suite:
        from falcon_audio_edge.bench.suite import build_suite
        from falcon_audio_edge.demo import home

        built = build_suite(suite, home() / "bench", progress=lambda m: typer.echo(m, err=True))
        paths, cascade, whisper = paths + built.bundles, built.cascade, whisper or built.whisper
    report = run_bench(paths, settings, whisper, cascade, progress=lambda m: typer.echo(m, err=True))
    report.command = " ".join(["fa-edge", *sys.argv[1:]])
    if plot:
        write_plot(report, plot)
    if out:
        atomic_text(out, markdown(report, _relative(plot, out.parent) if plot else None))
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    elif not out:
        typer.echo(markdown(report))


def _bench_live(bundles: list[Path], audio_seconds: str | None, repeats: int, tokens: int, threads: int,
                out: Path | None, as_json: bool, end_silence_ms: int | None, baselines: bool,
                clips: Path | None) -> None:  # fmt: skip
    from falcon_audio_edge.bench.live import live_report
    from falcon_audio_edge.files import atomic_text

    command = " ".join(["fa-edge", *sys.argv[1:]])
    text, turns = live_report(bundles, audio_seconds, repeats, tokens, threads, command, end_silence_ms,
                              progress=lambda m: typer.echo(m, err=True), baselines=baselines,
                              clips=clips)  # fmt: skip
    if out:
        atomic_text(out, text)
    if as_json:
        typer.echo(json.dumps(turns, indent=2))
    elif not out:
        typer.echo(text)


@app.command()
def assistant(
    bundle: Annotated[Path | None, typer.Argument(help="bundle to run (default: the demo bundle)")] = None,
    push_to_talk: Annotated[bool, typer.Option(help="Enter starts and stops recording (default: hands-free)")] = False,
    speak: Annotated[bool, typer.Option(help="say the answers with espeak-ng")] = True,
    input_device: Annotated[str | None, typer.Option(help="microphone: index or part of its name")] = None,
    threads: int = 0,
    max_tokens: int = 128,
    temperature: float = 0.0,
    speech_rate: Annotated[int, typer.Option(help="words per minute of the spoken answers (80-450)")] = 170,
    listen_first: Annotated[bool | None, typer.Option("--listen-first/--no-listen-first", help=LISTEN_HELP)] = None,
    barge_in: Annotated[
        bool,
        typer.Option(
            help="speaking over an answer stops it and starts your turn (for "
            "headphones: through a loudspeaker its own voice would)"
        ),
    ] = False,
    end_silence_ms: Annotated[int | None, typer.Option(help=END_SILENCE_HELP)] = None,
) -> None:
    """The offline voice assistant: listens to the microphone, answers on screen and out loud."""
    from falcon_audio_edge.apps.assistant import Assistant, AssistantSettings
    from falcon_audio_edge.apps.endpoint import EndpointSettings

    endpoint = EndpointSettings() if end_silence_ms is None else EndpointSettings(end_silence_ms=end_silence_ms)
    settings = AssistantSettings(bundle or Path(), push_to_talk, speak, input_device, threads, max_tokens,
                                 temperature, speech_rate, listen_first=listen_first, barge_in=barge_in,
                                 endpoint=endpoint)  # fmt: skip
    if bundle is None:  # checked settings first: building the demo bundle takes a while
        from dataclasses import replace

        from falcon_audio_edge.demo import prepare

        settings = replace(settings, bundle=prepare().bundle)
    Assistant(settings).run()


@app.command()
def devices() -> None:
    """List the audio input devices (* = default) for --input-device."""
    from falcon_audio_edge.apps.assistant import list_devices_text

    typer.echo(list_devices_text())


def _relative(path: Path, folder: Path) -> str:
    path, folder = path.resolve(), folder.resolve()
    return path.relative_to(folder).as_posix() if path.is_relative_to(folder) else str(path)


@app.command()
def ask(
    model: Annotated[Path, typer.Argument(help="bundle folder, or checkpoint folder for the PyTorch reference")],
    audio: Annotated[Path, typer.Option(help="WAV/FLAC/OGG file with the question")],
    prompt: Annotated[
        str | None, typer.Option(help="text instruction; without it the model answers the speech")
    ] = None,
    transcribe: Annotated[bool, typer.Option(help=f'same as --prompt "{TRANSCRIBE_PROMPT}"')] = False,
    listen_first: Annotated[bool | None, typer.Option("--listen-first/--no-listen-first", help=LISTEN_HELP)] = None,
    max_tokens: int = 256,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object instead of streaming")] = False,
    threads: Annotated[int, typer.Option(help="CPU threads (0 = all)")] = 0,
    temperature: float = 0.0,
    top_k: int = 40,
    top_p: float = 0.95,
    seed: int | None = None,
    n_ctx: Annotated[int | None, typer.Option(help="context size (default: 4096 or the model's, if smaller)")] = None,
    force_threads: Annotated[bool, typer.Option(help="allow more threads than the usable cores")] = False,
    decoding: Annotated[Path | None, typer.Option(help=DECODING_HELP, metavar="FILE.json")] = None,
) -> None:
    """Answer a spoken question, streaming tokens to the terminal."""
    prompt = checked_prompt(prompt, transcribe, listen_first)
    generation = GenerationSettings(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    search = read_decoding(decoding)
    runtime = RuntimeSettings(threads=threads, n_ctx=n_ctx, force_threads=force_threads)
    chat, backend = open_chat(model, runtime)
    with chat:
        listen_first = listens_first(listen_first, prompt, chat)
        generation, listening = turn_settings(generation, prompt, chat, search, listen_first)
        turn = chat.ask(audio, prompt, generation, listen_first=listen_first, listening=listening)
        for piece in turn:
            if not as_json:
                typer.echo(printable(piece), nl=False)
                sys.stdout.flush()
        result = turn.result
    if not as_json:
        typer.echo("")
        say_heard(result)
        return
    data = result.to_dict()
    data.update(backend=backend, model=str(model), load_ms=chat.load_ms, split_into_windows=result.windows > 1)
    if result.pieces > 1:
        data["note"] = (f"audio of {result.audio_seconds:.1f} s was heard in {result.pieces} phrases cut at "
                        f"pauses (each at most {SEGMENT_SECONDS:g} s)")  # fmt: skip
    elif result.windows > 1:
        window = chat.dims.audio.window_ms / 1000
        data["note"] = (f"audio of {result.audio_seconds:.1f} s was split into {result.windows} windows of "
                        f"up to {window:g} s")  # fmt: skip
    typer.echo(json.dumps(data, indent=2))


@app.command()
def info(
    bundle: Annotated[Path, typer.Argument(help="bundle folder")],
    as_json: Annotated[bool, typer.Option("--json", help="print the manifest as JSON")] = False,
) -> None:
    """Show what a bundle holds (dims, files, types, versions); checksums are verified."""
    from falcon_audio_edge.runtime.bundle import read_bundle

    b = read_bundle(bundle, verify=True)
    if as_json:
        typer.echo(json.dumps(b.manifest, indent=2))
        return
    d = b.dims
    lines = [
        f"bundle   {b.path}  ({b.size_bytes / 2**20:.1f} MiB, checksums OK)",
        f"model    {d.name}",
        f"encoder  Whisper d_model={d.encoder.d_model} layers={d.encoder.n_layers} heads={d.encoder.n_heads} "
        f"mels={d.encoder.n_mels}  [{b.manifest['encoder']['dtype']}]",
        f"audio    pool x{d.audio.pool_factor} ({50 / d.audio.pool_factor:g} tokens/s), connector={d.audio.connector}, "
        f"pad_to_30s={d.audio.pad_to_30s}, window {d.audio.window_ms} ms, ctc_head={d.audio.ctc_head}, "
        f"char_head={b.char_path is not None}",
        f"decoder  llama hidden={d.decoder.hidden} layers={d.decoder.n_layers} heads={d.decoder.n_heads}/"
        f"{d.decoder.n_kv_heads} head_dim={d.decoder.head_dim} ffn={d.decoder.ffn_dim} vocab={d.decoder.vocab_size}"
        f"  [{b.decoder_type}]" + ("  + LoRA adapter.gguf, applied while listening" if b.adapter_path else ""),
        f"prompt   chat_format={d.prompt.chat_format} tokenizer_pre={d.tokenizer_pre}",
    ]
    lines += [f"file     {name}  {f['bytes'] / 2**20:.2f} MiB  sha256 {f['sha256'][:16]}…" for name, f in
              b.manifest["files"].items()]  # fmt: skip
    check = b.manifest.get("verification")
    if isinstance(check, dict) and check:
        lines.append("verified " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                             for k, v in check.items()))  # fmt: skip
    versions = b.manifest.get("versions")
    versions = versions if isinstance(versions, dict) else {}
    lines.append("versions " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    from falcon_audio_edge.runtime.extra_bufts import decision

    lines.append("runtime  " + decision().line())
    typer.echo("\n".join(lines))


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM: remove what is half-written, then exit at once. Raising here instead would unwind through
    whatever the main thread is in; inside torch's ONNX export that was seen to swallow the exception (the
    export finished) or to crash the process (SIGSEGV, SIGABRT) before the staging folder was removed."""
    from falcon_audio_edge.files import remove_in_progress

    remove_in_progress()
    os.write(2, b"error: terminated\n")
    os._exit(128 + signum)


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)  # half-written outputs are removed
    try:
        app()  # standalone: usage errors are printed by typer and exit 2
    except FaEdgeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        typer.echo("error: interrupted", err=True)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()

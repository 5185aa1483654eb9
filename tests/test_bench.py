"""fa-edge bench: settings and input errors, the machine probes, and one real (short) run with every baseline."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from falcon_audio_edge.audio import SAMPLE_RATE
from falcon_audio_edge.bench.clips import speech_clip
from falcon_audio_edge.bench.limits import decode_ceiling_tok_s, gemm_gflops, measure, read_bandwidth_gb_s
from falcon_audio_edge.bench.run import BenchSettings, parse_seconds
from falcon_audio_edge.errors import ConfigError

FA_EDGE = [sys.executable, "-m", "falcon_audio_edge.cli"]


def fa_edge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*FA_EDGE, *args], capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"seconds": (5.0, 31.0)}, r"clip lengths \[31.0\] are outside \(0, 30\]"),
        ({"seconds": ()}, "at least one clip length"),
        ({"repeats": 0}, "repeats must be an integer >= 1"),
        ({"tokens": 0}, "tokens must be an integer >= 1"),
        ({"warmup": -1}, "warmup and threads must be >= 0"),
    ],
)
def test_bad_settings_name_the_value(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        BenchSettings(**kwargs)


def test_seconds_parsing():
    assert parse_seconds("5, 15,30") == (5.0, 15.0, 30.0)
    with pytest.raises(ConfigError, match="numbers separated by commas, got '5,x'"):
        parse_seconds("5,x")


def test_speech_clips_have_the_asked_length_and_real_signal():
    for seconds in (0.5, 5, 30):
        clip = speech_clip(seconds)
        assert len(clip.samples) == int(round(seconds * SAMPLE_RATE))
        assert float(np.sqrt(np.mean(clip.samples**2))) > 0.01
    with pytest.raises(ConfigError, match="clip length must be in"):
        speech_clip(45)


def test_machine_probes_give_plausible_figures():
    assert 1 < gemm_gflops(256, repeats=2) < 1e5
    bw = read_bandwidth_gb_s(64, repeats=2, threads=2)
    assert 0.1 < bw < 1e4
    lim = measure(threads=1, quick=True)
    assert decode_ceiling_tok_s(int(lim.bandwidth_gb_s * 1e9), lim) == pytest.approx(1.0)


def test_bad_bundles_and_clip_lengths_are_clear_errors_and_write_nothing(tmp_path, bundle_f32):
    out = tmp_path / "bench.md"
    proc = fa_edge("bench", str(tmp_path / "nope"), "--out", str(out))
    assert proc.returncode == 2 and "bundle" in proc.stderr and "nope" in proc.stderr and not out.exists()
    proc = fa_edge("bench", str(bundle_f32), "--audio-seconds", "5,40", "--out", str(out))
    assert proc.returncode == 2 and "[40.0] are outside" in proc.stderr and not out.exists()
    proc = fa_edge("bench", "--suite", "huge", "--out", str(out))
    assert proc.returncode == 2 and "unknown suite 'huge'" in proc.stderr and not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_a_short_run_measures_the_bundle_and_every_baseline(tmp_path, bundle_f32):
    from falcon_audio_edge.demo import whisper_dir

    out, png = tmp_path / "docs" / "bench.md", tmp_path / "docs" / "bench.png"
    proc = fa_edge("bench", str(bundle_f32), "--audio-seconds", "1,3", "--repeats", "2", "--warmup", "0",
                   "--tokens", "4", "--whisper", str(whisper_dir()), "--out", str(out), "--plot", str(png),
                   "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    kinds = [r["kind"] for r in report["results"]]
    assert kinds == ["bundle", "torch", "torch", "llama_text", "cascade"]
    bundle = report["results"][0]
    for seconds in ("1.0", "3.0"):
        stages = bundle["stages"][seconds]
        assert stages["encoder_ms"]["min"] > 0 and stages["decode_tok_s"]["median"] > 0
        assert stages["first_token_ms"]["median"] >= stages["prefill_ms"]["median"]
        assert stages["first_token_ms"]["min"] <= stages["first_token_ms"]["median"] <= stages["first_token_ms"]["max"]
    assert bundle["prompt_positions"]["3.0"] > bundle["prompt_positions"]["1.0"]  # longer clip, more audio tokens
    assert 10 < bundle["peak_rss_mb"] < 4000 and bundle["disk_mb"] > 0
    text = out.read_text()
    assert "bundle-f32 | 3 |" in text and "PyTorch fp32" in text and "llama.cpp text" in text
    assert f"fa-edge bench {bundle_f32}" in text and "bench.png" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["bench.md", "bench.png"]  # no temporary files left


def test_atomic_file_leaves_nothing_when_the_write_fails(tmp_path):
    from falcon_audio_edge.files import atomic_file, atomic_text

    target = tmp_path / "out" / "report.md"
    atomic_text(target, "old")

    def half_then_fail(tmp):
        tmp.write_text("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_file(target, half_then_fail)
    assert target.read_text() == "old" and sorted(p.name for p in target.parent.iterdir()) == ["report.md"]


def test_quantized_tiny_bundles_are_redone_when_their_f16_source_is_newer(tmp_path, monkeypatch):
    import os

    from falcon_audio_edge.quantize import bundle as quantize

    from falcon_audio_edge import demo
    from falcon_audio_edge.bench import suite

    f16 = tmp_path / "demo" / "bundle-f16"
    f16.mkdir(parents=True)
    (f16 / "manifest.json").write_text("{}")
    made = []

    def quantize_bundle(src, target, dec, enc, force, verify):
        made.append((target.name, dec))
        target.mkdir(exist_ok=True)
        (target / "manifest.json").write_text("{}")

    from types import SimpleNamespace

    from falcon_audio_edge.runtime import bundle as runtime_bundle

    monkeypatch.setattr(quantize, "quantize_bundle", quantize_bundle)
    monkeypatch.setattr(demo, "shipped_weights", lambda: f16 / "manifest.json")  # "weights are shipped"
    monkeypatch.setattr(demo, "prepare", lambda: demo.DemoPaths(tmp_path / "ckpt", f16))
    # the demo bundle's decoder is SmolLM2's own GGUF under the trained adapters: its copies keep it
    on_base = SimpleNamespace(adapter_path=f16 / "adapter.gguf", decoder_type="q4_1")
    monkeypatch.setattr(runtime_bundle, "read_bundle", lambda path, verify: on_base)
    suite.tiny_bundles(tmp_path, lambda message: None)
    assert made == [(f"tiny-q4_1-{enc}", None) for _, enc in suite.TINY_TYPES]
    made.clear()
    suite.tiny_bundles(tmp_path, lambda message: None)
    assert made == []  # up to date: reused
    os.utime(f16 / "manifest.json", ns=(2**62, 2**62))  # the f16 bundle was rebuilt (new shipped weights)
    suite.tiny_bundles(tmp_path, lambda message: None)
    assert len(made) == len(suite.TINY_TYPES)


def test_staged_folders_come_out_with_ordinary_permissions(tmp_path):
    """mkdtemp makes its folder private (0700); a finished bundle, checkpoint or data set follows the umask."""
    import os

    from falcon_audio_edge.files import staged_dir

    old = os.umask(0o022)
    try:
        with staged_dir(tmp_path / "out", force=False) as tmp:
            (tmp / "a.txt").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "out" / "a.txt").read_text() == "x"
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755


def test_quantized_bundles_are_also_measured_with_the_extra_buffers_off(tmp_path, bundle_f32, monkeypatch):
    from falcon_audio_edge.quantize.bundle import quantize_bundle

    from falcon_audio_edge.bench import run as run_mod
    from falcon_audio_edge.runtime.extra_bufts import Decision

    q8 = tmp_path / "bundle-q8_0"
    quantize_bundle(bundle_f32, q8, "q8_0", "fp32", force=True, verify=False)
    settings = BenchSettings((1.0,), 1, 0, 2, 1, baselines=False)
    monkeypatch.setattr(run_mod, "decision", lambda: Decision(True, "proven"))
    targets = run_mod.plan_targets([bundle_f32, q8], settings, None)
    q8_name = f"{q8.parent.name}/bundle-q8_0"
    assert [t.label for t in targets][1:] == [q8_name, f"{q8_name} · extra buffers off"]
    assert targets[2].spec["extra_bufts"] == "off" and "extra_bufts" not in targets[1].spec
    monkeypatch.setattr(run_mod, "decision", lambda: Decision(False, "not proven"))
    assert len(run_mod.plan_targets([q8], settings, None)) == 1


def test_the_pause_bench_finds_the_end_silence_that_cuts_a_clip_in_its_pause(clips, tmp_path):
    """Two questions 0.45 s apart, as one clip: an end silence of 300 ms cuts it in two, 700 ms hears it whole."""
    import json

    import soundfile as sf

    from falcon_audio_edge.audio import load_audio
    from falcon_audio_edge.bench import pauses

    q = load_audio(clips["q0"]).samples
    voiced = np.flatnonzero(np.abs(q) > 0.02)
    q = q[voiced[0] : voiced[-1] + 1]  # the question without the silence around it
    sf.write(tmp_path / "two.wav", np.concatenate([q, np.zeros(int(0.45 * 16000)), q]), 16000)
    sf.write(tmp_path / "one.wav", q, 16000)
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({"audio": f"{n}.wav", "text": "x"}) + "\n" for n in ("two", "one")))
    result = pauses.measure([manifest], [300, 700])
    assert result[300].cut == ["two"] and result[700].cut == [] and result[700].clips == 2
    assert result[700].unheard == [] and result[300].dropped == 0 and result[700].dropped >= 1  # resumed after 0.45 s
    out = tmp_path / "pauses.md"
    pauses.main([str(manifest), "--end-silence-ms", "300", "700", "--out", str(out)])
    assert "| 300 | 2 | 1 | two | 0 | 0 |" in out.read_text()
    with pytest.raises(SystemExit, match="end_silence_ms must be above speculate_ms"):
        pauses.main([str(manifest), "--end-silence-ms", "150"])
    with pytest.raises(SystemExit, match="no such manifest"):
        pauses.main([str(tmp_path / "none.jsonl")])

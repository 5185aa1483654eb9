"""The fa-edge command as a user runs it: init/export/info/ask, and every bad input's one-line error."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from falcon_audio_edge.audio import SAMPLE_RATE
from falcon_audio_edge.runtime.bundle import BUNDLE_FORMAT, MANIFEST_FILE, is_bundle
from tests.conftest import fa_edge


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_init_export_info_ask(tmp_path, clips):
    fa_edge("init", "--preset", "tiny", "-o", tmp_path / "ckpt")
    fa_edge("export", tmp_path / "ckpt", "-o", tmp_path / "bundle", "--decoder-type", "f16")
    info = fa_edge("info", tmp_path / "bundle").stdout
    assert "checksums OK" in info and "[f16]" in info and "decoder.gguf" in info
    manifest = json.loads(fa_edge("info", tmp_path / "bundle", "--json").stdout)
    assert set(manifest["files"]) == {"encoder.onnx", "decoder.gguf"}
    assert manifest["audio"]["sample_rate"] == SAMPLE_RATE
    streamed = fa_edge("ask", tmp_path / "bundle", "--audio", clips["q0"], "--max-tokens", "12")
    assert streamed.stdout.strip()


def test_long_audio_is_windowed_and_said_so(bundle_f32, clips):
    out = json.loads(fa_edge("ask", bundle_f32, "--audio", clips["45s"], "--max-tokens", "4", "--json").stdout)
    assert out["windows"] == 2 and out["split_into_windows"] is True
    assert out["audio_tokens"] == 750 + 375
    assert "split into 2 windows" in out["note"]


@pytest.fixture(scope="module")
def bad_audio(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad")
    sf.write(folder / "empty.wav", np.zeros(0, dtype=np.float32), SAMPLE_RATE)
    sf.write(folder / "silent.wav", np.zeros(SAMPLE_RATE, dtype=np.float32), SAMPLE_RATE)
    sf.write(folder / "nan.wav", np.full(SAMPLE_RATE, np.nan, dtype=np.float32), SAMPLE_RATE, subtype="FLOAT")
    (folder / "corrupt.wav").write_bytes(b"RIFF1234WAVEfmt this is not audio at all")
    return {p.stem: p for p in folder.iterdir()} | {"missing": folder / "missing.wav"}


@pytest.mark.parametrize(
    "name, needle",
    [("missing", "not found"), ("corrupt", "cannot read"), ("empty", "empty"), ("silent", "silent"), ("nan", "NaN")],
)
def test_bad_audio_gives_one_line_error(bundle_f32, bad_audio, name, needle):
    one_line_error(fa_edge("ask", bundle_f32, "--audio", bad_audio[name], check=False), needle, bad_audio[name].name)


def test_stereo_8k_input_is_accepted(bundle_f32, clips, tmp_path):
    data, _ = sf.read(clips["q0"], dtype="float32")
    sf.write(tmp_path / "s8k.wav", np.stack([data[::2], data[::2]], axis=1), SAMPLE_RATE // 2)
    out = json.loads(fa_edge("ask", bundle_f32, "--audio", tmp_path / "s8k.wav", "--max-tokens", "2", "--json").stdout)
    assert out["audio_tokens"] > 0


def test_tampered_bundle_is_refused_naming_the_file(bundle_f32, tmp_path, clips):
    copy = shutil.copytree(bundle_f32, tmp_path / "tampered")
    with open(copy / "decoder.gguf", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00\x01\x02\x03\x04\x05\x06\x07")
    one_line_error(fa_edge("ask", copy, "--audio", clips["q0"], check=False), "decoder.gguf", "sha256")
    one_line_error(fa_edge("info", copy, check=False), "decoder.gguf")
    (copy / "encoder.onnx").unlink()
    one_line_error(fa_edge("info", copy, check=False), "encoder.onnx", "missing")


def test_not_a_bundle(tmp_path, clips):
    one_line_error(fa_edge("ask", tmp_path, "--audio", clips["q0"], check=False), "neither a bundle")


def test_export_refuses_non_empty_folder_without_force(tiny_ckpt, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    one_line_error(fa_edge("export", tiny_ckpt, "-o", out, check=False), "not empty", "--force")
    one_line_error(fa_edge("export", tiny_ckpt, "-o", out, "--force", check=False), "not one this command made")
    assert (out / "precious.txt").read_text() == "keep me"  # --force replaces only a bundle
    bundle = tmp_path / "bundle"
    fa_edge("export", tiny_ckpt, "-o", bundle, "--no-verify")
    (bundle / "stale.txt").write_text("from before")
    fa_edge("export", tiny_ckpt, "-o", bundle, "--force", "--no-verify")
    assert (bundle / MANIFEST_FILE).is_file() and not (bundle / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "out"]  # no temporary folder left behind


def test_bad_settings_are_named(bundle_f32, clips, tiny_ckpt, tmp_path):
    one_line_error(fa_edge("ask", bundle_f32, "--audio", clips["q0"], "--temperature", "-1", check=False),
                   "temperature")  # fmt: skip
    one_line_error(fa_edge("export", tiny_ckpt, "-o", tmp_path / "b", "--decoder-type", "q3", check=False),
                   "unknown decoder type 'q3'")  # fmt: skip
    one_line_error(fa_edge("init", "-o", tmp_path / "c", "--preset", "huge", check=False), "unknown preset 'huge'")
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_interrupted_export_leaves_no_bundle(tiny_ckpt, tmp_path, sig):
    out = tmp_path / "bundle"
    exe = Path(sys.executable).with_name("fa-edge")
    proc = subprocess.Popen([str(exe), "export", str(tiny_ckpt), "-o", str(out)], stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.name.startswith(".bundle.tmp-") for p in tmp_path.iterdir()):
        time.sleep(0.02)  # wait until the export has started writing
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert not out.exists()
    leftovers = list(tmp_path.iterdir())
    if sig == signal.SIGTERM:
        assert leftovers == []  # cleaned up on the way out
    else:
        # what SIGKILL leaves (the next run into the same folder removes it: tests/test_user_files.py)
        assert all(p.name == ".bundle.lock" or p.name.startswith(".bundle.tmp-") and not (p / MANIFEST_FILE).exists()
                   for p in leftovers)  # fmt: skip


def test_running_a_bundle_imports_neither_torch_nor_transformers(bundle_f32, clips):
    code = (
        "import sys\n"
        "from falcon_audio_edge.runtime.backend import open_bundle\n"
        "from falcon_audio_edge.settings import GenerationSettings\n"
        f"chat = open_bundle({str(bundle_f32)!r})\n"
        f"chat.ask({str(clips['q0'])!r}, None, GenerationSettings(max_tokens=4)).run()\n"
        "import falcon_audio_edge.cli\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'onnx', 'gguf') if m in sys.modules)\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_an_interrupt_while_the_staging_folder_is_made_leaves_nothing(tmp_path, monkeypatch):
    """Ctrl-C right after the staging folder exists, before staged_dir.__enter__ returns (its __exit__ would not
    run): the folder is removed all the same."""
    from falcon_audio_edge.files import staged_dir

    real = Path.mkdir

    def mkdir_then_interrupted(self, *args, **kwargs):
        real(self, *args, **kwargs)
        if self.name.startswith(".out.tmp-"):
            raise KeyboardInterrupt

    monkeypatch.setattr(Path, "mkdir", mkdir_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        with staged_dir(tmp_path / "out", force=False):
            pass
    assert list(tmp_path.iterdir()) == []


def test_sigterm_cleanup_during_the_swap_puts_the_old_folder_back(tmp_path, monkeypatch):
    """The SIGTERM handler (remove_in_progress, then exit) may run between moving the old folder aside and moving
    the new one in: the old one goes back, the new one's staging folder goes."""
    from falcon_audio_edge.files import remove_in_progress, staged_dir

    out = tmp_path / "bundle"
    out.mkdir()
    (out / "old.txt").write_text("the user's bundle")
    (out / MANIFEST_FILE).write_text(json.dumps({"format": BUNDLE_FORMAT}))
    real = Path.rename
    seen = []

    class Terminated(BaseException):
        pass

    def rename_then_terminated(self, target):
        moved = real(self, target)
        if self == out:  # the old folder is aside; the handler runs now (then os._exit: no except, no finally)
            remove_in_progress()
            seen.append(sorted(p.name for p in tmp_path.iterdir()))
            raise Terminated
        return moved

    monkeypatch.setattr(Path, "rename", rename_then_terminated)
    with pytest.raises(Terminated):
        with staged_dir(out, force=True, replaceable=is_bundle) as tmp:
            (tmp / "new.txt").write_text("half a new bundle")
    monkeypatch.undo()
    assert seen == [["bundle"]]  # what the handler left: the old folder in place, no staging folder, no lock file
    assert (out / "old.txt").read_text() == "the user's bundle"


def test_sigterm_cleanup_stops_tracked_children():
    """The assistant's voice (espeak-ng) is a tracked child: the SIGTERM handler stops it before exiting."""
    from falcon_audio_edge.files import remove_in_progress, track_child

    child = track_child(subprocess.Popen(["sleep", "30"]))
    remove_in_progress()
    assert child.wait(timeout=5) == -signal.SIGTERM

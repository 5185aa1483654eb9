"""The real-people clips gathered from package archives (train/real.py), on a stand-in archive: no network."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest

from falcon_audio_edge.errors import FaEdgeError


def archive(path, files: dict[str, bytes]):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"pkg-1.0/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_clips_are_cut_resampled_and_listed_from_the_archives(tmp_path):
    import soundfile as sf
    from falcon_audio_edge.train.real import CLIPS, SOURCES, Clip, Source, build

    tone = (0.3 * np.sin(np.arange(44100 * 2) * 0.05)).astype(np.float32)
    wav = io.BytesIO()
    sf.write(wav, np.stack([tone, tone], axis=1), 44100, format="WAV")  # 2 s, stereo, 44.1 kHz
    raw = (np.arange(16000) % 200 - 100).astype("<i2").tobytes()  # 1 s of 16 kHz 16-bit samples
    tar = archive(tmp_path / "pkg-1.0.tar.gz", {"a/b.wav": wav.getvalue(), "c.raw": raw})
    clips = [Clip("cut", "pkg", "a/b.wav", "hello there", "real-x", span=(0.5, 1.5)),
             Clip("raw", "pkg", "c.raw", "go", "real-y", raw=True)]  # fmt: skip
    manifest = build(tmp_path / "out", clips, {"pkg": Source("pkg", "1.0", "MIT")}, lambda source, cache: tar)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [r["text"] for r in rows] == ["hello there", "go"] and rows[0]["voice"] == "real-x"
    assert rows[1]["source"] == "PyPI pkg==1.0: c.raw" and rows[1]["licence"] == "MIT"
    cut, rate = sf.read(tmp_path / "out" / rows[0]["audio"])
    assert rate == 16000 and cut.ndim == 1 and abs(len(cut) - 16000) <= 2  # the span's 1 s, mono, resampled
    assert len(sf.read(tmp_path / "out" / rows[1]["audio"])[0]) == 16000
    with pytest.raises(FaEdgeError, match="has no missing.wav"):
        gone = [Clip("gone", "pkg", "missing.wav", "x", "real-x")]
        build(tmp_path / "again", gone, {"pkg": Source("pkg", "1.0", "MIT")}, lambda source, cache: tar)
    assert not (tmp_path / "again" / "manifest.jsonl").exists()
    # the table: every clip from a known archive, a transcript and a family; no two clips share a name
    assert all(c.source in SOURCES and c.text.strip() and c.family.startswith("real-") for c in CLIPS)
    assert len({c.name for c in CLIPS}) == len(CLIPS) and not any("slt" in c.name for c in CLIPS)

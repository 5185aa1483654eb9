"""Long use: the soak command asks many times in one process and reports memory and time at both ends."""

from __future__ import annotations

import json
import subprocess
import sys


def soak(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "falcon_audio_edge.bench.soak", *map(str, args)],
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def test_a_short_soak_reports_memory_and_time_without_growth(bundle_f32):
    proc = soak(bundle_f32, "--asks", 60, "--reset-every", 3, "--max-tokens", 8, "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["asks"] == 60 and result["rss_first_mb"] > 50
    assert abs(result["rss_growth"]) < 0.05, result  # the target of 500 asks, on a tenth of them
    assert 0 < result["seconds_first"] < 5 and result["time_drift"] < 1.0, result


def test_soak_settings_are_checked(bundle_f32, tmp_path):
    proc = soak(bundle_f32, "--asks", 2)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: asks must be >= 6, reset_every and max_tokens " \
        ">= 1; got 2, 4, 16"  # fmt: skip
    proc = soak(tmp_path / "nothing", "--asks", 10)
    assert proc.returncode == 2 and proc.stderr.startswith("error: bundle folder not found")

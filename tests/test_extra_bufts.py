"""llama.cpp's extra buffer types (AMX): on only where proven, and the proof itself on every shipped quant type."""

from __future__ import annotations

import json

import pytest

from falcon_audio_edge.errors import ConfigError
from falcon_audio_edge.runtime import extra_bufts
from falcon_audio_edge.runtime.extra_bufts import PROOF_NAME, cpu_fingerprint, library_fingerprint


@pytest.fixture
def lib(tmp_path, monkeypatch):
    """A stand-in library folder: the decision reads only its files and the proof beside them."""
    folder = tmp_path / "lib"
    folder.mkdir()
    (folder / "libggml-cpu.so.0.1").write_bytes(b"\x7fELF one build")
    (folder / "libggml-cpu.so").symlink_to("libggml-cpu.so.0.1")
    monkeypatch.setattr(extra_bufts, "library_dir", lambda: folder)
    monkeypatch.setenv(extra_bufts.ENV, "auto")
    extra_bufts._decision.cache_clear()
    yield folder
    extra_bufts._decision.cache_clear()


def write_proof(lib, **changes):
    ok = {"ok": True, "min_correlation": 0.999, "top1": 1.0}
    proof = {"library": library_fingerprint(lib), "cpu": cpu_fingerprint(), "date": "2026-12-06",
             "types": {"q4_k_m": ok, "q8_0": ok}} | changes  # fmt: skip
    (lib / PROOF_NAME).write_text(json.dumps(proof))


def test_no_proof_keeps_them_off(lib):
    d = extra_bufts.decision()
    assert not d.on and "not proven" in d.reason
    assert d.line().startswith("llama.cpp extra buffers (AMX): off: ")


def test_a_matching_proof_turns_them_on(lib):
    write_proof(lib)
    d = extra_bufts.decision()
    assert d.on and "q4_k_m, q8_0" in d.reason


def test_a_rebuilt_library_another_cpu_or_a_failed_type_turn_them_off(lib):
    write_proof(lib)
    (lib / "libggml-cpu.so.0.1").write_bytes(b"\x7fELF another build")
    assert "another build" in extra_bufts.decision().reason and not extra_bufts.decision().on
    extra_bufts._decision.cache_clear()
    write_proof(lib, cpu="0" * 64)
    assert "another CPU" in extra_bufts.decision().reason
    extra_bufts._decision.cache_clear()
    write_proof(lib, types={"q4_k_m": {"ok": True}, "q4_0": {"ok": False, "error": "exit -11"}})
    d = extra_bufts.decision()
    assert not d.on and "q4_0 did not match" in d.reason
    extra_bufts._decision.cache_clear()
    (lib / PROOF_NAME).write_text("{not json")
    assert "unreadable" in extra_bufts.decision().reason


def test_they_are_off_unless_asked_for_and_a_bad_value_is_named(lib, monkeypatch):
    write_proof(lib)
    monkeypatch.delenv(extra_bufts.ENV)
    assert not extra_bufts.decision().on and "FA_EDGE_EXTRA_BUFTS=auto" in extra_bufts.decision().reason
    monkeypatch.setenv(extra_bufts.ENV, "off")
    assert not extra_bufts.decision().on
    monkeypatch.setenv(extra_bufts.ENV, "fast")
    with pytest.raises(ConfigError, match="FA_EDGE_EXTRA_BUFTS='fast' is not one of off, auto"):
        extra_bufts.decision()


def test_model_params_follow_the_decision(lib):
    lc = pytest.importorskip("llama_cpp")
    assert extra_bufts.model_params(lc).use_extra_bufts is False
    write_proof(lib)
    extra_bufts._decision.cache_clear()
    params = extra_bufts.model_params(lc)
    assert params.use_extra_bufts is True and params.n_gpu_layers == 0


def test_every_shipped_quant_type_decodes_with_the_extra_buffers_on(tmp_path):
    """The proof setup makes, run here on this machine's build: each type at each probe shape in a process of its
    own, the extra buffers on against off; every check runs to the end (on this AMX machine the test-sized
    shape's quantized types fail the comparison, which is what keeps the runtime off here)."""
    pytest.importorskip("llama_cpp")
    from falcon_audio_edge.quantize.decoder import DECODER_QUANTS
    from falcon_audio_edge.quantize.extra_bufts import MIN_CORRELATION, MIN_TOP1, PROBE_SHAPES, prove

    out = prove(threads=2, out=tmp_path / "proof.json", progress=lambda line: None)
    proof = json.loads(out.read_text())
    assert set(proof["types"]) == {f"{q} ({shape})" for q in DECODER_QUANTS for shape in PROBE_SHAPES}
    for key, result in proof["types"].items():
        assert "error" not in result, (key, result)  # each ran to the end: a crash would be a failed type
        assert result["ok"] == (result["min_correlation"] >= MIN_CORRELATION and result["top1"] >= MIN_TOP1)
    assert proof["types"]["f16 (falcon3-1b)"]["ok"]  # no repacking of f16 weights: the same products
    assert proof["library"] == library_fingerprint(extra_bufts.library_dir())

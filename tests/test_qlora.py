"""bitsandbytes in the recipe: QLoRA (NF4 decoder layers under LoRA) and 8-bit AdamW, on the tiny model.

The recipe takes both on a CUDA GPU only. The quantized layers and the optimizer are also checked on the CPU
(bitsandbytes has a CPU backend); the whole QLoRA run needs the GPU, where accelerate picks it up.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from falcon_audio_edge.train.qlora import check_bitsandbytes, decoder_linears, quantize_llm
from falcon_audio_edge.train.trainer import make_optimizer, train, with_lora
from safetensors.torch import load_file

from falcon_audio_edge.checkpoint import load_checkpoint
from falcon_audio_edge.errors import ConfigError
from falcon_audio_edge.lora import LoraSettings
from tests.test_train import config, manifest  # noqa: F401 (a fixture)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a CUDA GPU")
@pytest.mark.parametrize("patch, named", [({"train": ["connector", "lora"], "load_in_4bit": True}, "load_in_4bit"),
                                          ({"optimizer": "adamw8bit"}, "optimizer adamw8bit")])  # fmt: skip
def test_bitsandbytes_options_are_refused_without_a_gpu(tmp_path, tiny_ckpt, manifest, patch, named):  # noqa: F811
    with pytest.raises(ConfigError, match=f"{named} needs a CUDA GPU \\(this run is on cpu\\)"):
        train(config(tmp_path, tiny_ckpt, manifest, **patch), progress=False)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_without_bitsandbytes_both_options_say_how_to_install_it(tmp_path, tiny_ckpt, manifest, monkeypatch):  # noqa: F811
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails, as on a machine without it
    cfg = config(tmp_path, tiny_ckpt, manifest, train=["connector", "lora"], load_in_4bit=True)
    with pytest.raises(ConfigError, match=r"load_in_4bit uses bitsandbytes.*pip install 'falcon-audio-edge\[qlora\]'"):
        check_bitsandbytes(cfg, torch.device("cuda"))
    cfg = config(tmp_path, tiny_ckpt, manifest, optimizer="adamw8bit")
    with pytest.raises(ConfigError, match="optimizer adamw8bit uses bitsandbytes"):
        make_optimizer([{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 0.1}], cfg)


def test_quantize_llm_puts_every_decoder_linear_in_nf4_and_keeps_the_outputs_close(tiny_ckpt):
    bnb = pytest.importorskip("bitsandbytes")
    llm = load_checkpoint(tiny_ckpt).model.llm
    names = sorted(decoder_linears(llm))
    assert len(names) == 7 * len(llm.model.layers)  # q, k, v, o, gate, up, down
    ids = torch.arange(12)[None]
    before = llm(ids).logits.detach()  # with gradients on: bitsandbytes' CPU inference path needs width >= 64
    embeddings = llm.model.embed_tokens.weight.detach().clone()
    assert quantize_llm(llm.to(DEVICE), DEVICE, torch.float32) == len(names) and llm.is_loaded_in_4bit
    for name in names:
        layer = llm.get_submodule(name)
        assert isinstance(layer, bnb.nn.Linear4bit) and layer.weight.dtype == torch.uint8
        assert layer.weight.quant_state.quant_type == "nf4" and not layer.weight.requires_grad
    assert torch.equal(llm.model.embed_tokens.weight.detach().cpu(), embeddings)  # tied to lm_head: untouched
    after = llm(ids.to(DEVICE)).logits.detach().float().cpu()
    error = float((after - before).norm() / before.norm())
    assert 0 < error < 0.25  # 4-bit weights: close, not equal
    adapted = with_lora(llm, LoraSettings(4, 8, ("q_proj", "v_proj")))
    kinds = {type(adapted.get_submodule(f"base_model.model.{n}")).__module__ for n in names if n.endswith("q_proj")}
    assert kinds == {"peft.tuners.lora.bnb"}  # peft's 4-bit LoRA layers, whose merge dequantizes first


def test_adamw8bit_optimizer_keeps_8bit_states_and_trains(tmp_path, tiny_ckpt, manifest):  # noqa: F811
    bnb = pytest.importorskip("bitsandbytes")
    cfg = config(tmp_path, tiny_ckpt, manifest, optimizer="adamw8bit", learning_rate=0.01)
    weight = torch.nn.Parameter(torch.randn(64, 64, device=DEVICE))
    optimizer = make_optimizer([{"params": [weight], "lr": cfg.learning_rate}], cfg)
    assert isinstance(optimizer, bnb.optim.AdamW8bit)
    start = float((weight.detach() ** 2).sum())
    for _ in range(20):
        optimizer.zero_grad()
        (weight**2).sum().backward()
        optimizer.step()
    assert optimizer.state[weight]["state1"].dtype == torch.uint8  # the moments in 8 bits
    assert float((weight.detach() ** 2).sum()) < 0.9 * start


def test_a_resume_keeps_the_optimizer_and_the_4bit_base(tmp_path, manifest):  # noqa: F811
    from falcon_audio_edge.train.config import TrainConfig
    from falcon_audio_edge.train.state import BATCHING, RESUME_KEYS, check_resume

    data = {
        "checkpoint": "c",
        "train_manifest": str(manifest),
        "output_dir": str(tmp_path),
        "train": ["connector", "lora"],
    }
    cfg = TrainConfig.from_dict(data)
    saved = {k: getattr(cfg, k) for k in RESUME_KEYS} | {"batching": BATCHING, "base_sha256": "x"}
    check_resume(tmp_path, saved, cfg, "x")
    for patch, named in (({"optimizer": "adamw8bit"}, "optimizer"), ({"load_in_4bit": True}, "load_in_4bit")):
        with pytest.raises(ConfigError, match=rf"other \['{named}'\]"):
            check_resume(tmp_path, saved, TrainConfig.from_dict(data | patch), "x")
    older = {k: v for k, v in saved.items() if k not in ("optimizer", "load_in_4bit")}  # saved before either key
    check_resume(tmp_path, older, cfg, "x")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="QLoRA trains on a CUDA GPU")
@pytest.mark.parametrize("parts", [["connector", "lora"], ["connector", "lora", "encoder"]])
def test_qlora_run_resumes_and_merges_into_the_full_precision_base(tmp_path, tiny_ckpt, manifest, parts):  # noqa: F811
    from accelerate.state import AcceleratorState

    pytest.importorskip("bitsandbytes")
    settings = dict(train=parts, load_in_4bit=True, optimizer="adamw8bit", ctc_weight=0.5, bf16=True, max_steps=4,
                    eval_every=2)  # fmt: skip
    results = []
    for stop in (2, None):  # stopped after step 2, then resumed: the 4-bit base and 8-bit optimizer state go on
        AcceleratorState._reset_state(reset_partial_state=True)  # accelerate keeps one precision per process
        try:
            results.append(train(config(tmp_path, tiny_ckpt, manifest, stop_after=stop, **settings), progress=False))
        finally:
            AcceleratorState._reset_state(reset_partial_state=True)
    assert [r.steps for r in results] == [2, 4]
    result, cfg = results[-1], config(tmp_path, tiny_ckpt, manifest, **settings)
    assert np.isfinite(result.final_loss) and np.isfinite(result.eval_loss)
    trained = load_file(str(result.trainable))
    assert any(float(v.abs().max()) > 0 for k, v in trained.items() if "lora_B" in k)  # B starts at 0
    base = load_checkpoint(tiny_ckpt).model.state_dict()
    saved = load_checkpoint(result.checkpoint).model.state_dict()
    assert set(saved) == set(base) | {k for k in trained if k.startswith("ctc.")}
    linears = decoder_linears(load_checkpoint(tiny_ckpt).model.llm)
    targets = {f"llm.{m}.weight": m for m in linears if m.endswith(("q_proj", "v_proj"))}
    for key, value in saved.items():
        if key in targets:  # base + (alpha / r) B A, in float32
            a, b = (trained[f"llm.base_model.model.{targets[key]}.lora_{x}.default.weight"].float() for x in "AB")
            assert torch.allclose(value, base[key] + cfg.lora_settings.scale * b @ a, atol=1e-3), key
            assert not torch.equal(value, base[key]), key
        elif key.startswith("llm.") or (key.startswith("encoder.") and "encoder" not in parts):
            assert torch.equal(value, base[key]), key  # exactly the base: not an NF4-rounded copy
        elif key.startswith("encoder."):  # trained: as saved in float16 beside the run
            assert torch.allclose(value, trained[key].float(), atol=1e-2), key
        else:  # the connector and the CTC head exactly as trained
            assert torch.equal(value, trained[key]), key
    assert any(not torch.equal(saved[k], base[k]) for k in base if k.startswith("connector."))
    if "encoder" in parts:
        assert any(not torch.equal(saved[k], base[k]) for k in base if k.startswith("encoder.layers."))

"""train.ship: a run on top of the demo model stacked onto the weights that model was built from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from falcon_audio_edge.errors import CheckpointError, ConfigError


def _demo_like(tmp_path: Path, tiny_ckpt: Path):
    """A shipped-weights file, a demo folder whose checkpoint says it was built from it, and a run on top."""
    import shutil

    import torch
    from falcon_audio_edge.train.state import base_fingerprint
    from safetensors.torch import save_file

    from falcon_audio_edge.checkpoint import load_checkpoint
    from falcon_audio_edge.runtime.bundle import sha256_file

    model = load_checkpoint(tiny_ckpt).model
    shipped = {f"connector.{k}": v for k, v in model.connector.state_dict().items()}
    shipped |= {f"encoder.{k}": v.half() for k, v in model.encoder.state_dict().items()}
    shipped["llm.base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"] = torch.ones(2, 32)
    onto = tmp_path / "shipped.safetensors"
    save_file(shipped, str(onto), metadata={"dims": model.dims.to_json(), "train": "connector,lora,encoder"})
    base = tmp_path / "demo" / "checkpoint"
    shutil.copytree(tiny_ckpt, base)
    (tmp_path / "demo" / "sources.json").write_text(json.dumps({"shipped_sha256": sha256_file(onto)}))
    trained = {f"model.connector.{k}": v + 1.0 for k, v in model.connector.state_dict().items()}
    trained |= {"ctc.blank.weight": torch.ones(1, 32), "ctc.blank.bias": torch.zeros(1),
                "ctc.log_scale": torch.ones(())}  # fmt: skip
    run = tmp_path / "run"
    run.mkdir()
    config = {"checkpoint": str(base), "base_sha256": base_fingerprint(base), "train": ["connector"]}
    torch.save({"trainable": trained, "config": config}, run / "state.pt")
    return onto, base, run, shipped


def test_ship_stacks_a_run_on_the_demo_model_onto_its_shipped_weights(tmp_path, tiny_ckpt):
    import torch
    from falcon_audio_edge.train.ship import main, ship
    from safetensors import safe_open

    from falcon_audio_edge.config import ModelDims

    onto, base, run, shipped = _demo_like(tmp_path, tiny_ckpt)
    out = ship(run, onto, tmp_path / "new.safetensors")
    with safe_open(str(out), framework="pt") as f:
        meta, got = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    assert ModelDims.from_json(meta["dims"]).audio.ctc_head and meta["train"] == "connector,ctc,encoder,lora"
    assert set(got) == set(shipped) | {"ctc.blank.weight", "ctc.blank.bias", "ctc.log_scale"}
    name = "connector.proj.1.weight"
    assert torch.equal(got[name], shipped[name] + 1.0)  # the run's connector, the shipped LoRA and encoder
    assert all(torch.equal(got[k], v) for k, v in shipped.items() if not k.startswith("connector."))

    state = torch.load(run / "state.pt", weights_only=True)  # a char_weight run: its head ships as char_head.npz
    torch.save({**state, "trainable": {**state["trainable"], "chars.out.1.bias": torch.zeros(58)}}, run / "state.pt")
    with safe_open(str(ship(run, onto, tmp_path / "with-chars.safetensors")), framework="pt") as f:
        assert set(f.keys()) == set(got)
    torch.save(state, run / "state.pt")

    other = tmp_path / "other.safetensors"
    other.write_bytes(onto.read_bytes() + b" ")  # another file: the checkpoint was not built from it
    assert main([str(run), "--onto", str(other), "-o", str(tmp_path / "x.safetensors")]) == 2
    assert not (tmp_path / "x.safetensors").exists()
    state = torch.load(run / "state.pt", weights_only=True)
    state["trainable"]["model.llm.lm_head.weight"] = torch.zeros(1)
    torch.save(state, run / "state.pt")
    with pytest.raises(ConfigError, match="only the connector, encoder, CTC head and LoRA adapters can be stacked"):
        ship(run, onto, tmp_path / "y.safetensors")
    (base / "model.safetensors").write_bytes(b"changed")
    with pytest.raises(ConfigError, match="gone or holds other weights now"):
        ship(run, onto, tmp_path / "y.safetensors")


def _adapters(llm, targets: tuple[str, ...], r: int, seed: int, skip: str | None = None) -> dict:
    """Random peft-named adapters of rank ``r`` on the LLM's ``targets`` layers (values exact in float16)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, module in llm.named_modules():
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets and name != skip:
            rows, cols = module.weight.shape
            prefix = f"llm.base_model.model.{name}"
            out[f"{prefix}.lora_A.default.weight"] = torch.randn(r, cols, generator=gen).half()
            out[f"{prefix}.lora_B.default.weight"] = torch.randn(rows, r, generator=gen).half()
    return out


def test_stacked_adapters_are_the_sum_of_both_deltas(tiny_ckpt):
    import torch

    from falcon_audio_edge.checkpoint import load_checkpoint
    from falcon_audio_edge.lora import LoraSettings, merge_lora, stack_adapters

    targets = ("q_proj", "v_proj")
    llm = load_checkpoint(tiny_ckpt).model.llm
    below, above = _adapters(llm, targets, 2, seed=1), _adapters(llm, targets, 3, seed=2)
    low, high = LoraSettings(2, 4, targets), LoraSettings(3, 3, targets)  # scales 2 and 1
    one_by_one = load_checkpoint(tiny_ckpt).model.llm
    merge_lora(one_by_one, below, low, "below")
    merge_lora(one_by_one, above, high, "above")
    tensors, settings = stack_adapters(below, low, above, high, "run")
    assert settings == LoraSettings(5, 10, targets) and all(v.dtype == torch.float16 for v in tensors.values())
    at_once = load_checkpoint(tiny_ckpt).model.llm
    assert merge_lora(at_once, tensors, settings, "stacked") == 2 * len(at_once.model.layers)
    below_only = load_checkpoint(tiny_ckpt).model.llm
    merge_lora(below_only, below, low, "below")
    for key, value in at_once.state_dict().items():
        assert torch.allclose(value, one_by_one.state_dict()[key], atol=1e-5), key
    moved = max(float((at_once.state_dict()[k] - v).abs().max()) for k, v in below_only.state_dict().items())
    assert moved > 0.1  # the run's own adapters are in it, not only the shipped ones
    alone, alone_settings = stack_adapters({}, None, {k: v.float() for k, v in above.items()}, high, "run")
    assert alone_settings == high and set(alone) == set(above)  # nothing below: the run's as they are, in float16
    assert all(v.dtype == torch.float16 and torch.equal(v, above[k]) for k, v in alone.items())

    with pytest.raises(CheckpointError, match="differ from the shipped adapters'"):
        stack_adapters(below, low, _adapters(llm, ("q_proj",), 3, seed=2), LoraSettings(3, 3, ("q_proj",)), "run")
    missing = _adapters(llm, targets, 3, seed=2, skip="model.layers.1.self_attn.v_proj")
    with pytest.raises(CheckpointError, match=r"are in only one of the two"):
        stack_adapters(below, low, missing, high, "run")
    with pytest.raises(CheckpointError, match="needs a whole lora_alpha"):  # scale 4/3 at rank 5
        stack_adapters(_adapters(llm, targets, 3, seed=1), LoraSettings(3, 4, targets), below, low, "run")


def test_ship_stacks_a_runs_adapters_onto_the_shipped_ones(tmp_path, tiny_ckpt):
    import torch
    from falcon_audio_edge.train.ship import ship
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from falcon_audio_edge.checkpoint import load_checkpoint
    from falcon_audio_edge.demo import apply_trained
    from falcon_audio_edge.lora import LoraSettings, merge_lora
    from falcon_audio_edge.runtime.bundle import sha256_file

    onto, _, run, shipped = _demo_like(tmp_path, tiny_ckpt)
    llm = load_checkpoint(tiny_ckpt).model.llm
    targets = ("q_proj", "v_proj")
    below = _adapters(llm, targets, 2, seed=3)
    shipped = {k: v for k, v in shipped.items() if ".lora_" not in k} | below
    meta = {"dims": load_checkpoint(tiny_ckpt).model.dims.to_json(), "train": "connector,lora,encoder",
            "lora_r": "2", "lora_alpha": "4", "lora_targets": "q_proj,v_proj"}  # fmt: skip
    save_file(shipped, str(onto), metadata=meta)
    sources = tmp_path / "demo" / "sources.json"  # the demo checkpoint was built from this file
    sources.write_text(json.dumps({"shipped_sha256": sha256_file(onto)}))
    state = torch.load(run / "state.pt", weights_only=True)
    above = _adapters(llm, targets, 2, seed=4)
    state["trainable"] |= {f"model.{k}": v.float() for k, v in above.items()}
    state["config"] |= {"train": ["connector", "lora"], "lora_r": 2, "lora_alpha": 4, "lora_targets": list(targets)}
    torch.save(state, run / "state.pt")

    out = ship(run, onto, tmp_path / "new.safetensors")
    model = load_checkpoint(tiny_ckpt).model
    model.add_ctc_head()  # the stacked file has the run's CTC head; apply_trained checks the dims say so
    with safe_open(str(out), framework="pt") as f:
        got_meta = f.metadata()
    assert (got_meta["lora_r"], got_meta["lora_alpha"], got_meta["lora_targets"]) == ("4", "8", "q_proj,v_proj")
    apply_trained(model, out)
    expected = load_checkpoint(tiny_ckpt).model.llm
    merge_lora(expected, below, LoraSettings(2, 4, targets), "shipped")
    merge_lora(expected, above, LoraSettings(2, 4, targets), "run")
    for key, value in model.llm.state_dict().items():
        assert torch.allclose(value, expected.state_dict()[key], atol=1e-5), key
    assert set(load_file(str(out))) == set(shipped) | {"ctc.blank.weight", "ctc.blank.bias", "ctc.log_scale"}

    state["config"]["lora_targets"] = ["q_proj"]  # other layers than the shipped adapters': refused, nothing written
    torch.save(state, run / "state.pt")
    with pytest.raises(ConfigError, match="differ from the shipped adapters'"):
        ship(run, onto, tmp_path / "bad.safetensors")
    assert not (tmp_path / "bad.safetensors").exists()


def test_merge_gives_the_same_bits_in_any_rank_order(tiny_ckpt):
    """The merged weights must not depend on the order a matmul kernel sums the rank's terms in (the CPU's, the
    library's): the demo checkpoint built on another machine must be the same file, or a run trained there cannot
    be shipped here (train/ship.py checks its base by sha256)."""
    import torch

    from falcon_audio_edge.checkpoint import load_checkpoint
    from falcon_audio_edge.lora import LoraSettings, merge_lora

    targets, r = ("q_proj", "v_proj"), 16
    llm = load_checkpoint(tiny_ckpt).model.llm
    adapters = {k: v.float() for k, v in _adapters(llm, targets, r, seed=3).items()}
    order = torch.randperm(r, generator=torch.Generator().manual_seed(4))
    shuffled = {k: (v[order] if ".lora_A." in k else v[:, order]) for k, v in adapters.items()}  # the same deltas
    merged, reordered = load_checkpoint(tiny_ckpt).model.llm, load_checkpoint(tiny_ckpt).model.llm
    merge_lora(merged, adapters, LoraSettings(r, 8, targets), "adapters")
    merge_lora(reordered, shuffled, LoraSettings(r, 8, targets), "shuffled")
    for key, value in merged.state_dict().items():
        assert torch.equal(value, reordered.state_dict()[key]), key

"""The training recipe on the tiny model: config and manifest errors, a short run, resume, 2 processes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from falcon_audio_edge.train.config import TrainConfig
from falcon_audio_edge.train.data import read_manifest
from safetensors import safe_open
from safetensors.numpy import load_file

from falcon_audio_edge.audio import SAMPLE_RATE
from falcon_audio_edge.config import ModelDims
from falcon_audio_edge.errors import ConfigError
from tests.conftest import QUESTIONS


@pytest.fixture(scope="module")
def manifest(clips, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("manifest")
    rows = [{"audio": str(clips[f"q{i}"]), "instruction": "Transcribe the audio.", "target": QUESTIONS[i],
             "task": "transcribe"} for i in range(8)]  # fmt: skip
    rows += [{"audio": str(clips[f"q{i}"]), "instruction": "", "target": "An answer."} for i in range(8, 10)]
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config(tmp_path: Path, ckpt: Path, manifest: Path, **overrides) -> TrainConfig:
    data = dict(checkpoint=str(ckpt), train_manifest=str(manifest), eval_manifest=str(manifest),
                output_dir=str(tmp_path / "run"), max_steps=6, warmup_steps=2, batch_size=2, grad_accum=2,
                eval_every=3, save_every=2, learning_rate=5e-3, bf16=False)  # fmt: skip
    data.update(overrides)
    return TrainConfig.from_dict(data)


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"colour": "red"}, r"unknown keys \['colour'\]"),
        ({"train": ["connector", "decoder"]}, r"unknown parts \['decoder'\]"),
        ({"train": ["lora"]}, "must include 'connector'"),
        ({"load_in_4bit": True}, "load_in_4bit \\(QLoRA\\) needs 'lora'"),
        ({"warmup_steps": 6}, "warmup_steps=6 must be >= 0 and < max_steps=6"),
        ({"optimizer": "sgd"}, "optimizer must be one of"),
        ({"ctc_only_steps": 2}, "ctc_only_steps=2 needs ctc_weight or char_weight > 0"),
        ({"ctc_weight": 0.5, "ctc_only_steps": 7}, "ctc_only_steps=7 must be an integer from 0 to max_steps"),
        ({"checkpoint": 3}, "checkpoint must be a path, got 3"),
        ({"train_manifest": []}, r"train_manifest must be a path or a list of paths, got \[\]"),
        ({"train_manifest": ["a.jsonl", 3]}, r"train_manifest must be a path or a list of paths, got \['a.jsonl', 3\]"),
        ({"ctc_weight": -1}, "ctc_weight must be a number >= 0"),
        ({"encoder_learning_rate": 1e-4}, r"encoder_learning_rate=0.0001 needs 'encoder' in train"),
        ({"train": ["connector", "encoder"], "encoder_learning_rate": "1e-4"}, "encoder_learning_rate must be a num"),
        ({"ctc_learning_rate": 0.01}, r"ctc_learning_rate=0.01 needs ctc_weight > 0"),
        ({"ctc_weight": 0.5, "ctc_learning_rate": 2}, r"ctc_learning_rate must be a number in \(0, 1\), got 2"),
        ({"learning_rate": "1e-3"}, r"learning_rate must be a number in \(0, 1\), got '1e-3' \(YAML reads"),
        ({"learning_rate": 1.5}, r"learning_rate must be a number in \(0, 1\), got 1.5$"),
        ({"stop_after": 7}, r"stop_after=7 must be an integer from 1 to max_steps=6"),
        ({"stop_after": 0}, r"stop_after=0 must be an integer from 1 to max_steps=6"),
        ({"stop_after": "3"}, r"stop_after='3' must be an integer from 1 to max_steps=6"),
        ({"char_weight": -0.5}, r"char_weight must be a number >= 0, got -0.5"),
        ({"char_weight": True}, r"char_weight must be a number >= 0, got True"),
        ({"char_learning_rate": 0.01}, r"char_learning_rate=0.01 needs char_weight > 0"),
        ({"char_weight": 0.5, "char_learning_rate": 1e-0}, r"char_learning_rate must be a number in \(0, 1\)"),
        ({"bf16": "yes"}, r"bf16 must be true, false or auto, got 'yes'"),
        ({"bf16": 1}, r"bf16 must be true, false or auto, got 1"),
    ],
)
def test_bad_configs_are_rejected_naming_the_keys(tmp_path, tiny_ckpt, manifest, patch, message):
    with pytest.raises(ConfigError, match=message):
        config(tmp_path, tiny_ckpt, manifest, **patch)


def test_config_paths_are_relative_to_the_file_and_manifests_may_be_a_list(tmp_path):
    (tmp_path / "cfg").mkdir()
    path = tmp_path / "cfg" / "c.yaml"
    path.write_text("checkpoint: ../ck\noutput_dir: out\ntrain_manifest: [../a.jsonl, /abs/b.jsonl]\n"
                    "ctc_weight: 0.5\nctc_only_steps: 300\n")  # fmt: skip
    cfg = TrainConfig.load(path)
    assert cfg.train_manifests == [str(tmp_path / "a.jsonl"), "/abs/b.jsonl"]
    assert (cfg.checkpoint, cfg.output_dir) == (str(tmp_path / "ck"), str(tmp_path / "cfg" / "out"))
    assert cfg.ctc_only_steps == cfg.max_steps  # a CTC-only run (acoustic stage) is allowed
    path.write_text("checkpoint: ck\noutput_dir: out\ntrain_manifest: a.jsonl\n")
    assert TrainConfig.load(path).train_manifests == [str(tmp_path / "cfg" / "a.jsonl")]


def test_missing_keys_and_bad_yaml(tmp_path):
    (tmp_path / "c.yaml").write_text("train_manifest: x.jsonl\n")
    with pytest.raises(ConfigError, match=r"missing \['checkpoint', 'output_dir'\]"):
        TrainConfig.load(tmp_path / "c.yaml")
    (tmp_path / "bad.yaml").write_text("a: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        TrainConfig.load(tmp_path / "bad.yaml")


def test_bad_manifest_rows_are_skipped_with_a_count(tmp_path, clips, checkpoint):
    long = tmp_path / "long.wav"
    sf.write(long, np.resize(sf.read(clips["q0"])[0], 31 * SAMPLE_RATE), SAMPLE_RATE)
    (tmp_path / "broken.wav").write_bytes(b"not audio")
    rows = [
        {"audio": str(clips["q0"]), "instruction": "", "target": "ok"},
        {"audio": "missing.wav", "instruction": "", "target": "x"},
        {"audio": "broken.wav", "instruction": "", "target": "x"},
        {"audio": str(clips["q1"]), "instruction": "", "target": "  "},
        {"audio": str(long), "instruction": "", "target": "x"},
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    with pytest.warns(UserWarning, match="skipped 5 rows") as record:
        examples = read_manifest(path, checkpoint.dims)
    assert len(examples) == 1
    message = str(record[0].message)
    assert "2 missing or unreadable audio" in message and "1 empty target" in message and "audio over 30 s" in message
    path.write_text(json.dumps(rows[1]) + "\n")
    with pytest.raises(ConfigError, match="no usable rows left"), pytest.warns(UserWarning):
        read_manifest(path, checkpoint.dims)


def test_short_run_trains_the_connector_only(tmp_path, tiny_ckpt, manifest, checkpoint):
    from falcon_audio_edge.train.trainer import train

    from falcon_audio_edge.checkpoint import load_checkpoint

    result = train(config(tmp_path, tiny_ckpt, manifest), progress=False)
    assert result.steps == 6 and np.isfinite(result.final_loss) and result.eval_loss is not None
    trained = load_file(str(result.trainable))
    assert trained and all(k.startswith("connector.") for k in trained)
    after = load_checkpoint(result.checkpoint).model.state_dict()
    before = checkpoint.model.state_dict()
    changed = {k.split(".")[0] for k in before if not np.allclose(before[k].numpy(), after[k].numpy())}
    assert changed == {"connector"}


def test_resume_continues_where_the_run_stopped(tmp_path, tiny_ckpt, manifest, monkeypatch):
    import falcon_audio_edge.train.trainer as trainer

    full = trainer.train(config(tmp_path / "a", tiny_ckpt, manifest), progress=False)
    real_save = trainer.save_state

    def save_then_die(out, step, *args):
        real_save(out, step, *args)
        if step == 4:
            raise KeyboardInterrupt("simulated interruption")

    monkeypatch.setattr(trainer, "save_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(config(tmp_path / "b", tiny_ckpt, manifest), progress=False)
    monkeypatch.setattr(trainer, "save_state", real_save)
    resumed = trainer.train(config(tmp_path / "b", tiny_ckpt, manifest), progress=False)
    a, b = load_file(str(full.trainable)), load_file(str(resumed.trainable))
    assert resumed.steps == 6
    for key in a:
        assert np.allclose(a[key], b[key], atol=1e-6), key
    with pytest.raises(ConfigError, match=r"other \['batch_size'\]"):
        trainer.train(config(tmp_path / "b", tiny_ckpt, manifest, batch_size=4, max_steps=8), progress=False)
    import torch  # a state saved with another batch order (an older version) is not resumed either

    state_path = tmp_path / "b" / "run" / "state.pt"
    state = torch.load(state_path, weights_only=True)
    state["config"].pop("batching")
    torch.save(state, state_path)
    with pytest.raises(ConfigError, match="batching \\(saved: before length buckets\\)"):
        trainer.train(config(tmp_path / "b", tiny_ckpt, manifest, max_steps=8), progress=False)


def test_stop_after_ends_the_run_early_on_the_full_schedule_and_it_can_go_on(tmp_path, tiny_ckpt, manifest):
    import falcon_audio_edge.train.trainer as trainer

    full = trainer.train(config(tmp_path / "a", tiny_ckpt, manifest, save_every=6), progress=False)
    cut = trainer.train(config(tmp_path / "b", tiny_ckpt, manifest, save_every=6, stop_after=4), progress=False)
    assert cut.steps == 4 and cut.trainable.is_file() and (cut.checkpoint / "model.safetensors").is_file()
    a, b = load_file(str(full.trainable)), load_file(str(cut.trainable))
    assert any(not np.allclose(a[key], b[key], atol=1e-6) for key in a)  # 4 steps are not 6
    went_on = trainer.train(config(tmp_path / "b", tiny_ckpt, manifest, save_every=6), progress=False)
    b = load_file(str(went_on.trainable))
    assert went_on.steps == 6
    for key in a:  # the same optimizer state and schedule went on: the uninterrupted run's weights
        assert np.allclose(a[key], b[key], atol=1e-6), key


def test_accelerate_launch_with_two_cpu_processes(tmp_path, tiny_ckpt, manifest):
    cfg = config(tmp_path, tiny_ckpt, manifest, max_steps=4, eval_every=4, save_every=4, grad_accum=1, batch_size=4,
                 bf16="auto")  # each process may time bf16 on its own: process 0's choice is broadcast  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    launcher = Path(sys.executable).with_name("accelerate")
    # --multi_gpu is accelerate's torchrun launcher; with no GPU its processes train on the CPU (--cpu alone runs one)
    cmd = [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "falcon_audio_edge.train", str(path)]  # fmt: skip
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "training on cpu: 2 processes" in proc.stdout and "trained 4 steps" in proc.stdout, proc.stdout[-2000:]
    assert (tmp_path / "run" / "trainable.safetensors").is_file()


@pytest.mark.parametrize("parts, changed", [(["connector", "lora"], {"connector", "llm"}),
                                            (["connector", "encoder"], {"connector", "encoder"})])  # fmt: skip
def test_lora_and_encoder_training(tmp_path, tiny_ckpt, manifest, checkpoint, parts, changed, bundle_f32):
    from falcon_audio_edge.train.trainer import train

    from falcon_audio_edge.checkpoint import load_checkpoint

    result = train(config(tmp_path, tiny_ckpt, manifest, train=parts, max_steps=3, eval_every=3), progress=False)
    names = set(load_file(str(result.trainable)))
    if "lora" in parts:
        assert any("lora_A" in n for n in names)
    if "encoder" in parts:  # shipped whole, buffers included, in float16
        shipped = load_file(str(result.trainable))
        assert {n for n in names if n.startswith("encoder.")} == {
            f"encoder.{k}" for k in checkpoint.model.encoder.state_dict()
        }
        assert {str(v.dtype) for n, v in shipped.items() if n.startswith("encoder.")} == {"float16"}
    after = load_checkpoint(result.checkpoint).model.state_dict()  # LoRA merged into the LLM's weights
    before = checkpoint.model.state_dict()
    assert set(after) == set(before)
    moved = {k.split(".")[0] for k in before if not np.allclose(before[k].numpy(), after[k].numpy())}
    assert moved == changed
    if "lora" in parts:
        _check_lora_merge(result, tiny_ckpt, after, before)
    # the checkpoint keeps the run's adapters (its bundles: the base GGUF + adapter.gguf), none without LoRA
    assert (result.checkpoint / "adapter.safetensors").is_file() == ("lora" in parts)
    if "lora" in parts and "encoder" not in parts:
        from falcon_audio_edge.export.bundle import export_bundle

        from falcon_audio_edge.runtime.bundle import read_bundle

        on_base = export_bundle(result.checkpoint, tmp_path / "b", answer_llm=bundle_f32 / "decoder.gguf", verify=False)
        assert read_bundle(on_base).adapter_path is not None
        # a run on a checkpoint that holds adapters merged: its own are not all its LLM holds, so none are kept
        more = config(tmp_path, result.checkpoint, manifest, train=parts, max_steps=1, eval_every=1, warmup_steps=0,
                      output_dir=str(tmp_path / "more"))  # fmt: skip
        assert not (train(more, progress=False).checkpoint / "adapter.safetensors").exists()


def test_bf16_run_casts_the_frozen_llm_once_and_saves_it_exact(tmp_path, tiny_ckpt, manifest, checkpoint):
    import torch
    from accelerate.state import AcceleratorState
    from falcon_audio_edge.train.trainer import frozen_to_bf16, restore_frozen, train

    from falcon_audio_edge.checkpoint import load_checkpoint

    llm = load_checkpoint(tiny_ckpt).model.llm
    for p in llm.parameters():
        p.requires_grad_(False)
    originals = {n: (p.data_ptr(), p.detach().clone()) for n, p in llm.named_parameters()}
    kept = frozen_to_bf16(llm)
    assert set(kept) == set(originals) and all(p.dtype == torch.bfloat16 for p in llm.parameters())
    restore_frozen(llm, kept)
    for name, p in llm.named_parameters():  # the very same float32 storage is back
        assert p.data_ptr() == originals[name][0] and torch.equal(p.detach(), originals[name][1])

    cfg = config(tmp_path, tiny_ckpt, manifest, train=["connector", "lora"], bf16=True, max_steps=3, ctc_weight=0.5)
    AcceleratorState._reset_state(reset_partial_state=True)  # accelerate keeps one precision per process
    try:
        result = train(cfg, progress=False)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert np.isfinite(result.final_loss) and np.isfinite(result.eval_loss)
    saved = load_checkpoint(result.checkpoint).model
    assert all(p.dtype == torch.float32 for p in saved.parameters())
    base = checkpoint.model.llm.state_dict()
    for name, value in saved.llm.state_dict().items():  # only the LoRA targets moved, the rest bit for bit
        if not name.endswith(("q_proj.weight", "v_proj.weight")):
            assert torch.equal(value, base[name]), name


def test_bf16_auto_follows_the_hardware_and_true_without_it_warns(monkeypatch):
    import warnings

    import torch
    from falcon_audio_edge.train import precision
    from falcon_audio_edge.train.precision import CPU_BF16_CHECKS, measure, native_bf16, use_bf16

    cpu = torch.device("cpu")
    assert TrainConfig.from_dict({"checkpoint": "c", "train_manifest": "m", "output_dir": "o"}).bf16 == "auto"
    monkeypatch.setattr(precision, "bf16_is_faster", lambda: True)  # the timing: its own test below
    for has in (False, True):
        for name in CPU_BF16_CHECKS:
            monkeypatch.setattr(torch.cpu, name, lambda has=has: has)
        assert native_bf16(cpu) is has and use_bf16("auto", cpu) is has
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert use_bf16(True, cpu) is True and use_bf16(False, cpu) is False
        warned = [str(w.message) for w in caught]
        assert warned == [] if has else len(warned) == 1 and warned[0].startswith("bf16: true on a cpu without bf16")
    times = measure(rows=64, inner=64, cols=64, repeats=1)
    assert set(times) == {"float32", "bfloat16"} and all(ms > 0 for ms in times.values())


def test_bf16_auto_on_a_cpu_with_bf16_follows_the_timing(monkeypatch):
    """AVX512-BF16 without AMX can be slower in bf16 than in float32: auto then trains in float32."""
    import torch
    from falcon_audio_edge.train import precision

    for name in precision.CPU_BF16_CHECKS:
        monkeypatch.setattr(torch.cpu, name, lambda: True)
    for bf16_ms, want in ((5.0, True), (20.0, False)):
        monkeypatch.setattr(precision, "measure", lambda repeats, ms=bf16_ms: {"float32": 10.0, "bfloat16": ms})
        assert precision.use_bf16("auto", torch.device("cpu")) is want
        assert precision.use_bf16(True, torch.device("cpu")) is True  # asked for: kept, no timing needed
        assert precision.same_on_every_process(want) is want  # one process: its own choice
        assert precision.run_bf16("auto", torch.device("cpu"), main_process=True) is want


def test_bf16_auto_is_timed_on_the_main_process_alone(monkeypatch):
    """The other processes of a distributed run take process 0's choice (the 2-process test runs it); they never
    time the product themselves."""
    import torch
    from falcon_audio_edge.train import precision

    for name in precision.CPU_BF16_CHECKS:
        monkeypatch.setattr(torch.cpu, name, lambda: True)
    timed = []
    monkeypatch.setattr(precision, "bf16_is_faster", lambda: timed.append(1) or True)
    assert precision.run_bf16("auto", torch.device("cpu"), main_process=False) is False  # not distributed here
    assert timed == []
    assert precision.run_bf16("auto", torch.device("cpu"), main_process=True) is True and timed == [1]


def test_encoder_gets_its_own_learning_rate(tmp_path, tiny_ckpt, manifest):
    from falcon_audio_edge.train.trainer import make_optimizer, set_trainable

    from falcon_audio_edge.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tiny_ckpt)
    cfg = config(tmp_path, tiny_ckpt, manifest, train=["connector", "encoder"], encoder_learning_rate=1e-4)
    groups = make_optimizer(set_trainable(ckpt.model, cfg), cfg).param_groups
    assert [g["lr"] for g in groups] == [5e-3, 1e-4]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in ckpt.model.encoder.parameters()}
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in ckpt.model.connector.parameters()}


def test_ctc_head_trains_with_the_connector_or_at_its_own_rate(tmp_path, tiny_ckpt, manifest):
    from falcon_audio_edge.train.trainer import TrainingStep, make_optimizer, set_trainable, with_ctc_head

    from falcon_audio_edge.checkpoint import load_checkpoint

    for extra, rates in (({}, [5e-3, 1e-4]), ({"ctc_learning_rate": 0.02}, [5e-3, 1e-4, 0.02])):
        ckpt = load_checkpoint(tiny_ckpt)
        cfg = config(tmp_path, tiny_ckpt, manifest, train=["connector", "encoder"], encoder_learning_rate=1e-4,
                     ctc_weight=0.5, **extra)  # fmt: skip
        head = TrainingStep(ckpt.model, ckpt.tokenizer, False, cfg.ctc_weight).ctc
        groups = make_optimizer(with_ctc_head(set_trainable(ckpt.model, cfg), head, cfg), cfg).param_groups
        assert [g["lr"] for g in groups] == rates
        ctc_group = groups[-1] if extra else groups[0]
        assert {id(p) for p in head.parameters()} <= {id(p) for p in ctc_group["params"]}
        assert sum(len(g["params"]) for g in groups) == len({id(p) for g in groups for p in g["params"]})


def test_the_character_head_trains_at_its_own_rate_or_the_connectors(tmp_path, tiny_ckpt, manifest):
    """Without char_learning_rate the character head joins the connector's group, whatever ctc_learning_rate is."""
    from falcon_audio_edge.train.charhead import CharHeadConfig, head_module
    from falcon_audio_edge.train.trainer import set_trainable, with_ctc_head, with_head

    from falcon_audio_edge.checkpoint import load_checkpoint

    for extra, rates in (({}, [5e-3, 0.02]), ({"char_learning_rate": 0.03}, [5e-3, 0.02, 0.03])):
        ckpt = load_checkpoint(tiny_ckpt)
        cfg = config(tmp_path, tiny_ckpt, manifest, ctc_weight=0.5, ctc_learning_rate=0.02, char_weight=0.5, **extra)
        head = head_module(32, CharHeadConfig(width=16))
        ctc = ckpt.model.add_ctc_head()
        groups = with_head(with_ctc_head(set_trainable(ckpt.model, cfg), ctc, cfg), head, cfg.char_learning_rate)
        assert [g["lr"] for g in groups] == rates
        char_group = groups[-1] if extra else groups[0]
        assert {id(p) for p in head.parameters()} <= {id(p) for p in char_group["params"]}


def _check_lora_merge(result, tiny_ckpt, merged_by_peft, before):
    """The shipped file's adapters, merged without peft, give peft's merged weights; bad files are refused."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file as load_torch

    from falcon_audio_edge.checkpoint import load_checkpoint
    from falcon_audio_edge.errors import CheckpointError
    from falcon_audio_edge.lora import LoraSettings, merge_lora

    with safe_open(str(result.trainable), framework="pt") as f:
        settings = LoraSettings.from_metadata(f.metadata(), "trainable")
    adapters = {k: v for k, v in load_torch(str(result.trainable)).items() if k.startswith("llm.")}
    assert adapters and all(v.dtype == torch.float16 for v in adapters.values())
    llm = load_checkpoint(tiny_ckpt).model.llm
    assert merge_lora(llm, adapters, settings, "trainable") == 2 * len(llm.model.layers)  # q_proj, v_proj
    moved = 0.0
    for key, value in llm.state_dict().items():
        assert torch.allclose(value, merged_by_peft[f"llm.{key}"], atol=1e-4), key
        moved = max(moved, float((merged_by_peft[f"llm.{key}"] - before[f"llm.{key}"]).abs().max()))
    assert moved > 1e-3  # the adapters changed the weights well beyond the tolerance
    one = max(k for k in adapters if "lora_A" in k)  # the last layer merged: a bad one must not leave a half merge
    bad = [({k: v for k, v in adapters.items() if k != one}, "without both"),
           ({**adapters, "llm.bogus.weight": adapters[one]}, "not a LoRA weight"),
           ({**adapters, one: adapters[one][:, :-1]}, "do not fit")]  # fmt: skip
    for tensors, message in bad:
        untouched = load_checkpoint(tiny_ckpt).model.llm
        original = {k: v.clone() for k, v in untouched.state_dict().items()}
        with pytest.raises(CheckpointError, match=message):
            merge_lora(untouched, tensors, settings, "trainable")
        assert all(torch.equal(original[k], v) for k, v in untouched.state_dict().items())
    head = load_checkpoint(tiny_ckpt).model.llm
    head.lm_head.weight = head.model.embed_tokens.weight  # tied, as in SmolLM2
    vocab, hidden = head.lm_head.weight.shape
    tied = {**adapters, "llm.base_model.model.lm_head.lora_A.default.weight": torch.zeros(settings.r, hidden),
            "llm.base_model.model.lm_head.lora_B.default.weight": torch.zeros(vocab, settings.r)}  # fmt: skip
    with_head = LoraSettings(settings.r, settings.alpha, (*settings.targets, "lm_head"))
    with pytest.raises(CheckpointError, match="tied"):
        merge_lora(head, tied, with_head, "trainable")


def test_ctc_head_gives_distributions_and_its_loss_moves_the_connector(tmp_path, tiny_ckpt, manifest, checkpoint):
    import copy

    import torch
    from falcon_audio_edge.train.trainer import TrainingStep, train

    from falcon_audio_edge.checkpoint import load_checkpoint

    model = copy.deepcopy(checkpoint.model)  # a CTC run gives the model a head (and the dims say so)
    step = TrainingStep(model, checkpoint.tokenizer, frozen_encoder=True, ctc_weight=1.0)
    assert model.dims.audio.ctc_head and not checkpoint.model.dims.audio.ctc_head
    examples = read_manifest(manifest, checkpoint.dims)
    audio = step.audio(examples[0])
    logp = model.ctc_log_probs(audio)
    assert logp.shape == (audio.shape[0], 1 + checkpoint.dims.decoder.vocab_size)
    assert torch.allclose(logp.exp().sum(-1), torch.ones(audio.shape[0]), atol=1e-4)
    assert examples[0].transcript == QUESTIONS[0] and examples[-1].transcript is None  # QA rows have no text
    ctc_only = step(examples[:4], lm=False)
    assert torch.isfinite(ctc_only) and float(ctc_only) > 0
    nothing_spoken = step(examples[-2:], lm=False)  # QA rows without text: zero, but a CTC-only step can go on
    nothing_spoken.backward()
    assert float(nothing_spoken) == 0.0 and nothing_spoken.requires_grad
    assert torch.allclose(step(examples[:4], ctc=False) + ctc_only, step(examples[:4]), atol=1e-4)

    # three CTC-only updates, then joint ones; eval reads the CTC path; the head is saved with everything else
    result = train(config(tmp_path, tiny_ckpt, manifest, ctc_weight=0.5, ctc_only_steps=3), progress=False)
    assert result.steps == 6 and np.isfinite(result.final_loss)
    assert result.eval_ctc_wer is not None and result.eval_ctc_wer >= 0.9  # 6 steps of a random tiny model: no words
    shipped = load_file(str(result.trainable))
    assert {k.split(".")[0] for k in shipped} == {"connector", "ctc"}
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=True)
    assert {"model.ctc.log_scale", "model.ctc.blank.weight", "model.ctc.blank.bias"} <= set(state["trainable"])
    trained = load_checkpoint(result.checkpoint).model
    assert trained.dims.audio.ctc_head and trained.ctc is not None
    assert torch.equal(trained.ctc.blank.weight.half(), torch.from_numpy(shipped["ctc.blank.weight"]))  # fp16 ships

    # a head that only helps training: left out of the shipped weights and their dims, kept in the run's checkpoint
    aid = train(config(tmp_path, tiny_ckpt, manifest, output_dir=str(tmp_path / "aid"), ctc_weight=0.5,
                       ctc_only_steps=3, ship_ctc_head=False), progress=False)  # fmt: skip
    with safe_open(str(aid.trainable), framework="pt") as f:
        assert {k.split(".")[0] for k in f.keys()} == {"connector"}
        assert not ModelDims.from_json(f.metadata()["dims"]).audio.ctc_head
    assert load_checkpoint(aid.checkpoint).model.ctc is not None


def test_a_run_saved_before_the_head_moved_into_the_model_still_resumes(tmp_path, tiny_ckpt, manifest):
    """state.pt files written before kept the CTC head beside the model ("ctc.*"): init_from reads them."""
    import torch
    from falcon_audio_edge.train.trainer import train

    first = train(config(tmp_path, tiny_ckpt, manifest, ctc_weight=0.5, max_steps=2, warmup_steps=0), progress=False)
    path = tmp_path / "run" / "state.pt"
    state = torch.load(path, weights_only=True)
    state["trainable"] = {k.removeprefix("model.") if k.startswith("model.ctc.") else k: v
                          for k, v in state["trainable"].items()}  # fmt: skip
    torch.save(state, path)
    head = state["trainable"]["ctc.blank.weight"]
    again = config(
        tmp_path,
        tiny_ckpt,
        manifest,
        ctc_weight=0.5,
        max_steps=2,
        warmup_steps=0,
        learning_rate=1e-9,
        ctc_learning_rate=1e-9,
        output_dir=str(tmp_path / "r2"),
        init_from=str(tmp_path / "run"),
    )
    second = train(again, progress=False)
    assert first.steps == second.steps == 2
    got = load_file(str(second.trainable))["ctc.blank.weight"]
    assert np.allclose(got, head.half().numpy(), atol=1e-3)  # the old head, saved in fp16 (a fresh one: random)


def test_the_character_head_trains_with_the_encoder_and_goes_on_from_the_checkpoints(tmp_path, tiny_ckpt, manifest):
    """char_weight: the character CTC loss trains a head (fresh, or the checkpoint's char_head.npz) with the
    connector and encoder; eval reads its greedy spelling; the head lands beside the run and in its checkpoint."""
    import shutil

    import torch
    from falcon_audio_edge.train.trainer import train

    from falcon_audio_edge.runtime.charnet import CHAR_HEAD_FILE, load_char_head

    cfg = config(tmp_path, tiny_ckpt, manifest, train=["connector", "encoder"], char_weight=0.5, ctc_only_steps=3,
                 char_learning_rate=0.01)  # fmt: skip
    first = train(cfg, progress=False)
    assert first.char_head == tmp_path / "run" / CHAR_HEAD_FILE
    assert first.eval_char_wer is not None and first.eval_char_wer >= 0.9  # 6 steps of a random tiny model
    assert first.eval_ctc_wer is None and "eval character WER" in first.summary()
    head = load_char_head(first.char_head, hidden=32)
    again = load_char_head(first.checkpoint / CHAR_HEAD_FILE, hidden=32)
    assert all(np.array_equal(a, b) for a, b in zip(head.weights, again.weights, strict=True))
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=True)
    assert any(k.startswith("chars.") for k in state["trainable"]) and state["config"]["char_weight"] == 0.5

    # on from a checkpoint that has a head: that head is where training starts (a rate of ~0 keeps it there)
    base = tmp_path / "with-head"
    shutil.copytree(first.checkpoint, base)
    slow = config(tmp_path, base, manifest, char_weight=0.5, char_learning_rate=1e-9, max_steps=2, warmup_steps=0,
                  output_dir=str(tmp_path / "second"))  # fmt: skip
    kept = load_char_head(train(slow, progress=False).char_head, hidden=32)
    assert all(np.abs(a - b).max() < 1e-3 for a, b in zip(head.weights, kept.weights, strict=True))


def test_a_run_saved_before_character_heads_resumes(tmp_path, tiny_ckpt, manifest):
    """state.pt files written before char_weight existed carry no such key: they resume as runs without one."""
    import torch
    from falcon_audio_edge.train.trainer import train

    cfg = config(tmp_path, tiny_ckpt, manifest, max_steps=4, stop_after=2)
    train(cfg, progress=False)
    path = tmp_path / "run" / "state.pt"
    state = torch.load(path, weights_only=True)
    del state["config"]["char_weight"], state["config"]["char_learning_rate"]
    torch.save(state, path)
    assert train(config(tmp_path, tiny_ckpt, manifest, max_steps=4), progress=False).steps == 4
    with pytest.raises(ConfigError, match=r"other \['char_weight'\]"):
        train(config(tmp_path, tiny_ckpt, manifest, max_steps=4, char_weight=0.5), progress=False)


def test_ctc_collapse_merges_repeats_and_drops_blanks():
    from falcon_audio_edge.train.trainer import ctc_collapse

    assert ctc_collapse([0, 5, 5, 0, 5, 3, 3, 0]) == [4, 4, 2]  # 0 is the blank; token t is t + 1 on the path
    assert ctc_collapse([7, 7, 7]) == [6] and ctc_collapse([0, 0]) == [] and ctc_collapse([]) == []


def test_a_frozen_encoders_frames_are_computed_once_and_kept_in_host_memory(checkpoint, manifest):
    import copy

    import torch
    from falcon_audio_edge.train.trainer import TrainingStep

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # the GPU machine runs this too
    model = copy.deepcopy(checkpoint.model).to(device)
    step = TrainingStep(model, checkpoint.tokenizer, frozen_encoder=True)
    ex = read_manifest(manifest, checkpoint.dims)[0]
    first = step.audio(ex)
    assert first.device.type == device.type and first.shape == (ex.n_audio_tokens, checkpoint.dims.decoder.hidden)
    ((cached,),) = step._frames.values()  # one window's frames
    assert cached.device.type == "cpu"  # the whole set's frames would fill a GPU
    model.encoder.layer_norm.bias.data += 1.0  # a cached reading does not run the encoder again
    assert torch.equal(step.audio(ex), first) and len(step._frames) == 1


def test_ctc_transcripts_read_the_greedy_path_as_text(checkpoint):
    import copy

    import torch
    from falcon_audio_edge.train.trainer import TrainingStep

    model = copy.deepcopy(checkpoint.model)
    step = TrainingStep(model, checkpoint.tokenizer, frozen_encoder=True, ctc_weight=1.0)
    ids = checkpoint.tokenizer(QUESTIONS[0], add_special_tokens=False)["input_ids"]
    path = [0] + [t + 1 for i in ids for t in (i, i)] + [0]  # each token twice, then collapsed
    scores = torch.full((len(path), 1 + checkpoint.dims.decoder.vocab_size), -1e4)
    scores[torch.arange(len(path)), torch.tensor(path)] = 0.0

    class FixedPath(torch.nn.Module):
        def forward(self, audio, table):
            return scores  # (T, 1 + V) with the path as its argmax

    model.ctc = FixedPath()
    assert step.ctc_transcripts([torch.zeros(len(path), checkpoint.dims.decoder.hidden)]) == [QUESTIONS[0]]


def test_init_from_an_earlier_run(tmp_path, tiny_ckpt, manifest, capsys):
    """A LoRA run starts from a connector-only run's weights (CTC head included); mismatches are refused."""
    import torch
    from falcon_audio_edge.train.state import base_fingerprint, init_weights
    from falcon_audio_edge.train.trainer import TrainingStep, set_trainable, train

    from falcon_audio_edge.checkpoint import load_checkpoint

    first = config(tmp_path, tiny_ckpt, manifest, output_dir=str(tmp_path / "a"), max_steps=3, ctc_weight=0.5)
    train(first, progress=False)
    saved = torch.load(tmp_path / "a" / "state.pt", weights_only=True)["trainable"]
    cfg = config(tmp_path, tiny_ckpt, manifest, output_dir=str(tmp_path / "b"), train=["connector", "lora"],
                 ctc_weight=0.5, init_from=str(tmp_path / "a"), max_steps=3)  # fmt: skip
    ckpt = load_checkpoint(tiny_ckpt)
    set_trainable(ckpt.model, cfg)
    step = TrainingStep(ckpt.model, ckpt.tokenizer, True, cfg.ctc_weight)
    base = base_fingerprint(tiny_ckpt)
    fresh = init_weights(tmp_path / "a", step, cfg, base)
    assert fresh and all("lora_" in k for k in fresh)
    now = dict(step.named_parameters())
    assert all(torch.equal(now[k], v) for k, v in saved.items())
    assert train(cfg, progress=False).steps == 3
    assert f"starting from {tmp_path / 'a'}; {len(fresh)} trainable tensors fresh" in capsys.readouterr().out

    with pytest.raises(ConfigError, match="not found"):
        init_weights(tmp_path / "nowhere", step, cfg, base)
    with pytest.raises(ConfigError, match="trained from other base weights"):
        init_weights(tmp_path / "a", step, cfg, "0" * 64)
    plain = load_checkpoint(tiny_ckpt)
    set_trainable(plain.model, first)
    with pytest.raises(ConfigError, match="not trainable here"):  # b's LoRA weights, a model without LoRA
        init_weights(tmp_path / "b", TrainingStep(plain.model, plain.tokenizer, True, 0.5), first, base)
    with pytest.raises(ConfigError, match="output_dir itself"):
        config(tmp_path, tiny_ckpt, manifest, init_from=str(tmp_path / "run"))


def test_resume_and_init_from_follow_the_base_weights_not_its_path(tmp_path, tiny_ckpt, manifest):
    """The same weights under another path resume; a checkpoint re-made at the run's path is refused."""
    import shutil

    import torch
    from falcon_audio_edge.train.trainer import train

    from falcon_audio_edge.checkpoint import load_checkpoint, save_checkpoint

    base = tmp_path / "base"
    shutil.copytree(tiny_ckpt, base)
    assert train(config(tmp_path, base, manifest, max_steps=3), progress=False).steps == 3
    moved = tmp_path / "moved"
    base.rename(moved)
    assert train(config(tmp_path, moved, manifest, max_steps=5), progress=False).steps == 5
    remade = load_checkpoint(moved)
    with torch.no_grad():  # another base LLM in the same folder
        next(remade.model.llm.parameters()).add_(0.01)
    save_checkpoint(remade.model, remade.tokenizer, moved, force=True)
    with pytest.raises(ConfigError, match=r"other \['checkpoint \(its weights\)'\]"):
        train(config(tmp_path, moved, manifest, max_steps=7), progress=False)
    with pytest.raises(ConfigError, match="trained from other base weights"):
        train(config(tmp_path, moved, manifest, output_dir=str(tmp_path / "c"), init_from=str(tmp_path / "run")),
              progress=False)  # fmt: skip


def test_batches_group_similar_lengths():
    """Length buckets cut right padding; every example at most once per epoch; the same order on every run."""
    import random

    from falcon_audio_edge.train.schedule import batches

    cfg = TrainConfig.from_dict({"checkpoint": "c", "train_manifest": "m", "output_dir": "o", "batch_size": 8})
    rng = random.Random(0)
    lengths = [rng.randint(40, 400) for _ in range(1000)]
    epoch = batches(lengths, cfg, 0)
    flat = [i for b in epoch for i in b]
    assert len(flat) == len(set(flat)) and len(flat) >= 1000 - 8 * 4 and all(len(b) == 8 for b in epoch)
    padded = sum(max(lengths[i] for i in b) * len(b) for b in epoch)
    assert padded / sum(lengths[i] for i in flat) < 1.1  # plain shuffling: about 1.5 here
    assert batches(lengths, cfg, 0) == epoch and batches(lengths, cfg, 1) != epoch


def test_the_committed_config_is_the_one_run_the_script_trains_and_ships():
    """train/configs holds one valid config, a fresh run from the base checkpoint that ships its CTC head, and
    scripts/train_tiny.sh trains it and ships its output with the character head trained on it."""
    root = Path(__file__).resolve().parents[1]
    configs = {p.name: TrainConfig.load(p) for p in sorted((root / "train" / "configs").glob("*.yaml"))}
    assert sorted(configs) == ["whisper-tiny-smollm2-natural.yaml"]
    cfg = configs["whisper-tiny-smollm2-natural.yaml"]
    assert cfg.init_from is None and cfg.ship_ctc_head and len(cfg.train_manifests) == 7
    shipped = (root / "scripts" / "train_tiny.sh").read_text()
    assert '"$BIN/fa-edge" train train/configs/whisper-tiny-smollm2-natural.yaml\n' in shipped
    out = Path(cfg.output_dir).name
    assert f"cp work/{out}/trainable.safetensors falcon_audio_edge/data/shipped/trainable.safetensors" in shipped
    assert f"cp work/{out}/checkpoint/char_head.npz falcon_audio_edge/data/shipped/char_head.npz" in shipped
    assert shipped.index("train.charhead work/" + out) < shipped.index("cp work/" + out)
    before_run = shipped[: shipped.index('"$BIN/fa-edge" train')].replace("\\\n", " ")
    seeds = re.findall(r"\d+", before_run.split("for pair in ", 1)[1].split(";", 1)[0])
    assert re.search(r'make_set "\$first" &\n\s*job=\$!\n\s*make_set "\$second"\n\s*wait "\$job"', before_run)
    built = set()  # (folder, split) of every data command before the run, the seed pairs unrolled
    for line in before_run.splitlines():
        if "train.natural" in line:
            folder = Path(re.search(r'-o "?(work/[^\s"]+)', line).group(1)).name
            for split in re.search(r"--splits (\S+)", line).group(1).split(","):
                built |= {(folder.replace("$1", seed), split) for seed in seeds}
    assert {(Path(m).parent.parent.name, "train") for m in cfg.train_manifests} <= built
    assert (Path(cfg.eval_manifest).parent.parent.name, "dev") in built
    assert f"-o work/{Path(cfg.checkpoint).name} " in before_run
    head = shipped[shipped.index("train.charhead") :].split("\ncp ", 1)[0]
    assert {(Path(w.split()[0]).parent.parent.name, "train") for w in head.split("--train ")[1:]} <= built


def test_resume_refuses_another_manifest_list(tmp_path, manifest):
    from falcon_audio_edge.train.state import BATCHING, RESUME_KEYS, check_resume

    cfg = TrainConfig.from_dict({"checkpoint": "c", "train_manifest": str(manifest), "output_dir": str(tmp_path)})
    saved = {k: getattr(cfg, k) for k in RESUME_KEYS}
    saved |= {"batching": BATCHING, "base_sha256": "x", "train_manifests": cfg.train_manifests}
    check_resume(tmp_path, saved, cfg, "x")  # the same list: resumes
    more = TrainConfig.from_dict({**cfg.to_dict(), "train_manifest": [str(manifest), str(manifest)]})
    with pytest.raises(ConfigError, match=r"other \['train_manifest \(the batch order a resume replays\)'\]"):
        check_resume(tmp_path, saved, more, "x")

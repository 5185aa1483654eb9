"""SpecAugment in training: masks stay inside the clip, change every step, and never reach eval or run time."""

from __future__ import annotations

import pytest
import torch
from falcon_audio_edge.train.augment import SpecAugment
from falcon_audio_edge.train.config import TrainConfig

from falcon_audio_edge.errors import ConfigError
from tests.conftest import QUESTIONS


def masked(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a != b


def test_masks_stay_inside_the_clip_and_within_their_widths():
    mel = torch.randn(80, 3000)
    aug = SpecAugment(freq_masks=2, freq_width=15, time_masks=2, time_width=12)
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        out = aug(mel, 300, gen)
        diff = masked(out, mel)
        assert not diff[:, 300:].any()  # the padding after the clip is never touched
        rows = diff.any(1)
        full_rows = diff[:, :300].all(1)  # a masked band covers the whole clip
        full_cols = diff.all(0)  # a masked span covers every band
        assert int(full_rows.sum()) <= 2 * 15 and int(full_cols.sum()) <= 2 * 12
        assert bool((rows == full_rows).all()) or bool(full_cols.any())  # every change is a band or a span
        fill = mel[:, :300].mean()
        assert torch.allclose(out[diff], fill.expand(int(diff.sum())))
    assert torch.equal(SpecAugment()(mel, 300, gen), mel)  # no masks: the clip as it was
    runs = [SpecAugment(2, 15, 2, 12)(mel, 300, torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(*runs)  # the generator decides


def test_masking_is_seen_at_least_sometimes():
    mel = torch.randn(80, 3000)
    gen = torch.Generator().manual_seed(1)
    changed = [bool(masked(SpecAugment(2, 15, 2, 12)(mel, 300, gen), mel).any()) for _ in range(20)]
    assert sum(changed) >= 15  # a width of 0 can be drawn, but rarely for all four masks


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"freq_masks": -1}, r"freq_masks must be an integer >= 0, got -1"),
        ({"time_mask_width": 1.5}, r"time_mask_width must be an integer >= 0, got 1.5"),
        ({"time_masks": True}, r"time_masks must be an integer >= 0, got True"),
    ],
)
def test_bad_augment_settings_are_rejected_naming_them(patch, message):
    data = {"checkpoint": "c", "train_manifest": "m.jsonl", "output_dir": "o", **patch}
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(data)


@pytest.mark.parametrize("frozen_encoder", [False, True])
def test_training_audio_is_masked_afresh_and_eval_audio_never(clips, tiny_ckpt, frozen_encoder):
    from falcon_audio_edge.train.data import Example
    from falcon_audio_edge.train.trainer import TrainingStep

    from falcon_audio_edge.audio import load_audio
    from falcon_audio_edge.checkpoint import load_checkpoint
    from falcon_audio_edge.frontend import audio_features

    ckpt = load_checkpoint(tiny_ckpt)
    feats = audio_features(load_audio(clips["q0"]).samples, ckpt.dims)
    ex = Example(mels=tuple(feats.mels), window_tokens=tuple(feats.tokens), instruction=None, target=QUESTIONS[0],
                 task="transcribe", source="q0", transcript=QUESTIONS[0])  # fmt: skip
    plain = TrainingStep(ckpt.model, ckpt.tokenizer, frozen_encoder).eval()
    step = TrainingStep(ckpt.model, ckpt.tokenizer, frozen_encoder, augment=SpecAugment(2, 15, 2, 12), seed=3)
    with torch.no_grad():
        reference = plain.audio(ex)
        step.eval()
        assert torch.equal(step.audio(ex), reference)  # eval: the clip as heard at run time
        step.train()
        first, second = step.audio(ex), step.audio(ex)
    assert first.shape == reference.shape
    assert not torch.equal(first, reference) and not torch.equal(first, second)  # fresh masks each time
    step.train()
    loss = step.lm_loss([ex], [step.audio(ex)])
    loss.backward()
    grads = [p.grad for p in ckpt.model.encoder.parameters()]
    assert all(g is None for g in grads) == frozen_encoder  # a frozen encoder stays out of the graph

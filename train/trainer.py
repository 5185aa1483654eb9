"""One-stage training: the connector (+ LoRA on the LLM, + the encoder, as configured) on audio instructions.

Loss only on the target tokens. AdamW with linear warm-up and cosine decay, gradient accumulation, bf16
autocast, periodic eval, checkpoint and resume. Runs unchanged under ``accelerate launch`` with several
processes: each takes its shard of every batch and gradients are averaged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from falcon_audio_edge.train.augment import SpecAugment
from falcon_audio_edge.train.charhead import greedy_text, head_log_probs
from falcon_audio_edge.train.charnet import HeadNet, char_ctc_loss, start_head, to_char_head
from falcon_audio_edge.train.config import TrainConfig
from falcon_audio_edge.train.data import Example, read_manifest
from falcon_audio_edge.train.precision import run_bf16
from falcon_audio_edge.train.qlora import adamw8bit, check_bitsandbytes, full_precision_model, quantize_llm
from falcon_audio_edge.train.schedule import approx_length, lr_lambda, micro_batches
from falcon_audio_edge.train.state import (
    base_fingerprint,
    init_weights,
    load_state,
    save_state,
    save_trainable,
)
from torch import nn

from falcon_audio_edge.checkpoint import load_checkpoint, save_checkpoint
from falcon_audio_edge.files import atomic_file
from falcon_audio_edge.lora import LoraSettings
from falcon_audio_edge.model import whisper_encode
from falcon_audio_edge.runtime.charnet import CHAR_HEAD_FILE
from falcon_audio_edge.runtime.chars import transcript_labels
from falcon_audio_edge.verify import word_error_rate

IGNORE = -100


def ctc_collapse(path: list[int]) -> list[int]:
    """A greedy CTC path -> token ids: repeats merged, blanks (0) dropped, ids shifted back to the vocabulary."""
    return [i - 1 for i, prev in zip(path, [0, *path][:-1], strict=True) if i != prev and i != 0]


class TrainingStep(nn.Module):
    """The whole loss computation as one module, so a distributed wrapper sees every forward."""

    def __init__(
        self, model, tokenizer, frozen_encoder: bool, ctc_weight: float = 0.0,
        augment: SpecAugment | None = None, seed: int = 0, chars: HeadNet | None = None, char_weight: float = 0.0,
    ):  # fmt: skip
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.layout = model.dims.prompt
        self.frozen_encoder = frozen_encoder
        self.ctc_weight = ctc_weight
        if ctc_weight:  # a fresh head, or the base checkpoint's own trains on
            model.add_ctc_head().requires_grad_(True)
        self._frames: dict[int, list[torch.Tensor]] = {}  # a frozen encoder's windows, once per example (host)
        self.augment = augment if augment is not None and augment.active else None
        self._gen = torch.Generator().manual_seed(seed)
        if (chars is None) != (not char_weight):
            raise ValueError(f"a character head and char_weight > 0 go together (char_weight={char_weight})")
        self.chars = chars  # the character CTC head (runtime/charnet.py's network), trained with char_weight
        self.char_weight = char_weight

    @property
    def ctc(self) -> nn.Module | None:
        """The model's CTC head while it trains (``ctc_weight`` > 0)."""
        return self.model.ctc if self.ctc_weight else None

    @property
    def device(self) -> torch.device:
        return next(self.model.connector.parameters()).device

    def audio(self, ex: Example) -> torch.Tensor:
        """Audio embeddings of one example, (n_audio_tokens, H); the same frames as at inference: each encoder
        window heard on its own, its frames stacked on their own."""
        frames = self._window_frames(ex)
        parts = [
            self.model.project_frames(f.to(self.device))[0, :t] for f, t in zip(frames, ex.window_tokens, strict=True)
        ]
        return torch.cat(parts)  # (T_i, H) each -> (n_audio_tokens, H)

    def _window_frames(self, ex: Example) -> list[torch.Tensor]:
        """The encoder's frames of each window (1, F_i, D); a frozen encoder's are computed once per example."""
        k = self.model.dims.audio.pool_factor
        augmenting = self.augment is not None and self.training  # a fresh masking each time: never cached
        if augmenting or not self.frozen_encoder:
            out = []
            for mel_np, tokens in zip(ex.mels, ex.window_tokens, strict=True):
                mel = torch.from_numpy(mel_np)
                if augmenting:
                    mel = self.augment(mel, 2 * tokens * k, self._gen)  # the window's mel frames: conv stride 2
                with torch.set_grad_enabled(not self.frozen_encoder and torch.is_grad_enabled()):
                    out.append(whisper_encode(self.model.encoder, mel[None].to(self.device))[:, : tokens * k])
            return out
        key = id(ex)
        if key not in self._frames:  # kept in host memory: on a GPU the whole set's frames would fill it
            with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
                self._frames[key] = [
                    whisper_encode(self.model.encoder, torch.from_numpy(mel)[None].to(self.device))[:, : t * k]
                    .cpu()
                    .clone()
                    for mel, t in zip(ex.mels, ex.window_tokens, strict=True)
                ]
        return self._frames[key]

    def _tokens(self, text: str) -> torch.Tensor:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return torch.tensor(ids, dtype=torch.long, device=self.device)

    def example(self, ex: Example, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Input embeddings (L, H) and labels (L,) of one example; labels only on the target."""
        before, after = self.layout.around_audio(ex.instruction)
        ids_before = self._tokens(before)
        ids_after = self._tokens(after)
        ids_target = self._tokens(ex.target + self.layout.assistant_end)
        text_after = torch.cat([ids_after, ids_target])
        before_emb, after_emb = self.model.embed_tokens(ids_before), self.model.embed_tokens(text_after)
        embeds = torch.cat([before_emb, audio.to(before_emb.dtype), after_emb])  # (L, H), one dtype
        labels = torch.full((embeds.shape[0],), IGNORE, dtype=torch.long, device=embeds.device)
        labels[-len(ids_target) :] = ids_target
        return embeds, labels

    def forward(self, batch: list[Example], lm: bool = True, ctc: bool = True) -> torch.Tensor:
        """The LM loss on the targets, plus ``ctc_weight`` x the token CTC loss and ``char_weight`` x the character
        CTC loss on the transcripts (if any)."""
        audio = [self.audio(ex) for ex in batch]
        loss = self.lm_loss(batch, audio) if lm else torch.zeros((), device=self.device)
        if ctc and self.ctc is not None:
            loss = loss + self.ctc_weight * self.ctc_loss(batch, audio)
        if ctc and self.chars is not None:
            loss = loss + self.char_weight * self.char_loss(batch, audio)
        return loss

    def char_loss(self, batch: list[Example], audio: list[torch.Tensor]) -> torch.Tensor:
        """The character head's CTC loss on the spelled transcripts (examples without one are left out)."""
        spelled = [(a, labels) for ex, a in zip(batch, audio, strict=True)
                   if (labels := transcript_labels(ex.transcript or ""))]  # fmt: skip
        if not spelled:
            return sum(a.sum() for a in audio) * 0.0
        return char_ctc_loss(self.chars, [a for a, _ in spelled], [labels for _, labels in spelled])

    def char_transcripts(self, audio: list[torch.Tensor]) -> list[str]:
        """Greedy reading of audio embeddings by the character head."""
        return [greedy_text(head_log_probs(self.chars, a).float().cpu().numpy()) for a in audio]

    def ctc_loss(self, batch: list[Example], audio: list[torch.Tensor]) -> torch.Tensor:
        """CTC of each spoken transcript against its audio positions (examples without one are left out)."""
        keep = [i for i, ex in enumerate(batch) if ex.transcript]
        if not keep:  # still a graph (a CTC-only step must be able to call backward), contributing nothing
            return sum(a.sum() for a in audio) * 0.0
        logp = [self.model.ctc_log_probs(audio[i]) for i in keep]  # each (T_i, 1 + V)
        width = max(x.shape[0] for x in logp)
        padded = logp[0].new_zeros(width, len(logp), logp[0].shape[1])
        for j, x in enumerate(logp):
            padded[: x.shape[0], j] = x  # (T_i, C) into (T, N, C)
        targets = [self._tokens(batch[i].transcript) + 1 for i in keep]  # 0 is the blank
        return nn.functional.ctc_loss(
            padded, torch.cat(targets), torch.tensor([x.shape[0] for x in logp]),
            torch.tensor([len(t) for t in targets]), blank=0, zero_infinity=True,
        )  # fmt: skip

    def ctc_transcripts(self, audio: list[torch.Tensor]) -> list[str]:
        """Greedy CTC reading of audio embeddings (each (T, H)): what they say without the LLM."""
        paths = [self.model.ctc_log_probs(a).argmax(-1).tolist() for a in audio]  # each (T,)
        return [self.tokenizer.decode(ctc_collapse(p), skip_special_tokens=True).strip() for p in paths]

    def lm_loss(self, batch: list[Example], audio: list[torch.Tensor]) -> torch.Tensor:
        pairs = [self.example(ex, a) for ex, a in zip(batch, audio, strict=True)]
        width = max(e.shape[0] for e, _ in pairs)
        hidden = pairs[0][0].shape[1]
        embeds = pairs[0][0].new_zeros(len(pairs), width, hidden)
        labels = torch.full((len(pairs), width), IGNORE, dtype=torch.long, device=embeds.device)
        mask = torch.zeros(len(pairs), width, dtype=torch.long, device=embeds.device)
        for i, (e, lab) in enumerate(pairs):  # right padding
            embeds[i, : len(e)], labels[i, : len(lab)], mask[i, : len(e)] = e, lab, 1
        return self.target_loss(embeds, mask, labels)

    def target_loss(self, embeds: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return target_loss(self.model.llm, embeds, mask, labels)


def target_loss(llm, embeds: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on the target tokens only (labels elsewhere are IGNORE); the vocabulary projection runs on
    those positions alone."""
    base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm  # LoRA layers are in place
    hidden = base.model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    targets = labels[:, 1:]  # position t predicts token t+1
    keep = targets != IGNORE
    logits = base.lm_head(hidden[:, :-1][keep])  # (B, L-1, H)[keep] -> (N, H) -> (N, V)
    return nn.functional.cross_entropy(logits.float(), targets[keep])


def set_trainable(model, cfg: TrainConfig) -> list[dict]:
    """Freeze all, then unfreeze what ``cfg.train`` names; returns the optimizer's parameter groups."""
    for p in model.parameters():
        p.requires_grad_(False)
    if "lora" in cfg.train:
        model.llm = with_lora(model.llm, cfg.lora_settings)
    for p in model.connector.parameters():
        p.requires_grad_(True)
    encoder = list(model.encoder.parameters()) if "encoder" in cfg.train else []
    for p in encoder:
        p.requires_grad_(True)
    rest = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("encoder.")]
    groups = [{"params": rest, "lr": cfg.learning_rate}]
    if encoder:
        groups.append({"params": encoder, "lr": cfg.encoder_learning_rate or cfg.learning_rate})
    return groups


def with_lora(llm, settings: LoraSettings):
    """peft's LoRA adapters on the LLM's ``settings.targets`` layers (4-bit ones too, under QLoRA)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, target_modules=list(settings.targets))
    return get_peft_model(llm, config)  # lora_dropout: peft's default, 0


def with_ctc_head(groups: list[dict], ctc: nn.Module | None, cfg: TrainConfig) -> list[dict]:
    """The token CTC head's parameters, at ``ctc_learning_rate`` (``with_head``)."""
    return with_head(groups, ctc, cfg.ctc_learning_rate)


def with_head(groups: list[dict], head: nn.Module | None, rate: float | None) -> list[dict]:
    """A CTC head (token or character) trains with the connector, or at its own ``rate`` in a group of its own (a
    fresh head on audio embeddings that were trained before must move faster than they do, or it settles on
    all-blank)."""
    if head is None:
        return groups
    if rate is None:
        return [{**groups[0], "params": [*groups[0]["params"], *head.parameters()]}, *groups[1:]]
    return [*groups, {"params": list(head.parameters()), "lr": rate}]


def make_optimizer(params: list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw8bit":
        return adamw8bit(params, cfg.learning_rate, cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


@dataclass
class Evaluation:
    """One periodic eval: mean LM loss on the targets, and the greedy WERs of the heads that train (or None)."""

    loss: float
    ctc_wer: float | None = None  # the token CTC head's reading
    char_wer: float | None = None  # the character head's reading

    def text(self) -> str:
        out = f"eval loss {self.loss:.4f}"
        out += "" if self.ctc_wer is None else f", eval CTC WER {self.ctc_wer:.3f}"
        return out + ("" if self.char_wer is None else f", eval character WER {self.char_wer:.3f}")


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    evaluation: Evaluation | None  # the last eval (None: no eval manifest)
    checkpoint: Path
    trainable: Path
    char_head: Path | None = None  # the trained character head (runs with char_weight)

    @property
    def eval_loss(self) -> float | None:
        return None if self.evaluation is None else self.evaluation.loss

    @property
    def eval_ctc_wer(self) -> float | None:
        """Greedy CTC WER of the last eval (runs with a CTC head)."""
        return None if self.evaluation is None else self.evaluation.ctc_wer

    @property
    def eval_char_wer(self) -> float | None:
        """Greedy character WER of the last eval (runs with char_weight)."""
        return None if self.evaluation is None else self.evaluation.char_wer

    def summary(self) -> str:
        evals = "" if self.evaluation is None else f", {self.evaluation.text()}"
        heads = "" if self.char_head is None else f", character head {self.char_head}"
        return (f"trained {self.steps} steps: loss {self.final_loss:.4f}{evals}; checkpoint {self.checkpoint}, "
                f"trained weights {self.trainable}{heads}")  # fmt: skip


def frozen_to_bf16(llm: nn.Module) -> dict[str, torch.Tensor]:
    """Cast the frozen LLM weights to bfloat16 once: autocast would cast them again at every op of every step
    (it caches casts only for weights that train). Returns the float32 originals for ``restore_frozen``, in host
    memory (on a GPU they would take twice the bf16 copy's room there)."""
    kept = {}
    for name, p in llm.named_parameters():
        if not p.requires_grad and p.dtype == torch.float32:
            kept[name] = p.data.cpu()  # no copy when the run is on the CPU
            p.data = p.data.to(torch.bfloat16)
    return kept


def restore_frozen(llm: nn.Module, kept: dict[str, torch.Tensor]) -> None:
    """Put the float32 originals back, so the saved checkpoint holds the base weights exactly."""
    for name, p in llm.named_parameters():
        if name in kept:
            p.data = kept[name].to(p.device)  # no copy when the run is on the CPU


def evaluate(step_module: TrainingStep, examples: list[Example], cfg: TrainConfig, accelerator) -> Evaluation:
    """Mean LM loss on the targets, and (with CTC heads) their greedy WERs on the spoken examples: how well the
    audio embeddings alone say the words. The loss is a poor proxy for listening; the WERs are direct ones."""
    step_module.eval()
    losses, refs, ctc_hyps, char_hyps = [], [], [], []
    with torch.no_grad(), accelerator.autocast():
        for i in range(0, len(examples), cfg.batch_size):
            chunk = examples[i : i + cfg.batch_size]
            audio = [step_module.audio(ex) for ex in chunk]  # once, for the loss and the CTC readings
            losses.append(float(step_module.lm_loss(chunk, audio)))
            spoken = [a for a, ex in zip(audio, chunk, strict=True) if ex.transcript]
            refs += [ex.transcript for ex in chunk if ex.transcript]
            ctc_hyps += step_module.ctc_transcripts(spoken) if step_module.ctc is not None else []
            char_hyps += step_module.char_transcripts(spoken) if step_module.chars is not None else []
    step_module.train()
    wer = [word_error_rate(refs, hyps) if refs and hyps else None for hyps in (ctc_hyps, char_hyps)]
    return Evaluation(sum(losses) / len(losses), *wer)


def train(cfg: TrainConfig, progress: bool = True) -> TrainResult:
    from accelerate import Accelerator, PartialState
    from accelerate.utils import parse_flag_from_env, set_seed
    from tqdm.auto import tqdm

    # on the CPU when asked (--cpu) or when there is no accelerator (CUDA, MPS, XPU, ...): accelerate then runs
    # torchrun's processes as MULTI_CPU
    on_cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.accelerator.is_available()
    state = PartialState(cpu=on_cpu)
    bf16 = run_bf16(cfg.bf16, state.device, state.is_main_process)
    accelerator = Accelerator(mixed_precision="bf16" if bf16 else "no", gradient_accumulation_steps=cfg.grad_accum)
    check_bitsandbytes(cfg, accelerator.device)
    set_seed(cfg.seed)
    out = Path(cfg.output_dir)
    ckpt = load_checkpoint(cfg.checkpoint)
    if cfg.load_in_4bit:  # QLoRA: before peft wraps the layers, so its adapters sit over the 4-bit ones
        quantize_llm(ckpt.model.llm, accelerator.device, torch.bfloat16 if bf16 else torch.float32)
    params = set_trainable(ckpt.model, cfg)
    train_set = [ex for m in cfg.train_manifests for ex in read_manifest(m, ckpt.dims)]
    eval_set = read_manifest(cfg.eval_manifest, ckpt.dims, cfg.max_eval_examples) if cfg.eval_manifest else []
    step_module = TrainingStep(
        ckpt.model,
        ckpt.tokenizer,
        "encoder" not in cfg.train,
        cfg.ctc_weight,
        cfg.spec_augment,
        cfg.seed + 1000 * accelerator.process_index,
        start_head(Path(cfg.checkpoint) / CHAR_HEAD_FILE, ckpt.dims.decoder.hidden) if cfg.char_weight else None,
        cfg.char_weight,
    )
    params = with_head(with_ctc_head(params, step_module.ctc, cfg), step_module.chars, cfg.char_learning_rate)
    optimizer = make_optimizer(params, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    base = base_fingerprint(cfg.checkpoint)
    step = load_state(out, step_module, optimizer, scheduler, cfg, base)
    if step == 0 and cfg.init_from:
        fresh = init_weights(Path(cfg.init_from), step_module, cfg, base)
        if accelerator.is_main_process:
            print(f"starting from {cfg.init_from}; {len(fresh)} trainable tensors fresh (e.g. {fresh[:2]})")
    wrapped, optimizer = accelerator.prepare(step_module, optimizer)  # the schedule steps once per update
    kept = frozen_to_bf16(ckpt.model.llm) if bf16 else {}  # after prepare: DDP broadcasts float32 states
    rank, world = accelerator.process_index, accelerator.num_processes
    if accelerator.is_main_process:
        print(f"training on {accelerator.device.type}: {world} process{'es' if world > 1 else ''}, bf16 {bf16}")
    stream = micro_batches([approx_length(ex) for ex in train_set], cfg, step * cfg.grad_accum)
    bar = tqdm(total=cfg.last_step, initial=step, disable=not (progress and accelerator.is_main_process))
    loss_value, evals = float("nan"), None
    wrapped.train()
    while step < cfg.last_step:
        for _ in range(cfg.grad_accum):
            batch = [train_set[i] for i in next(stream)][rank::world]
            with accelerator.accumulate(wrapped), accelerator.autocast():
                loss = wrapped(batch, lm=step >= cfg.ctc_only_steps)
                accelerator.backward(loss)
                optimizer.step()
                if accelerator.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad()
        step += 1
        loss_value = float(accelerator.reduce(loss.detach(), reduction="mean"))
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        if eval_set and (step % cfg.eval_every == 0 or step == cfg.last_step):
            evals = evaluate(step_module, eval_set, cfg, accelerator)
            bar.write(f"step {step}: train loss {loss_value:.4f}, {evals.text()}")
        if step % cfg.save_every == 0 and accelerator.is_main_process:
            save_state(out, step, step_module, optimizer, scheduler, cfg, base)
        accelerator.wait_for_everyone()
    bar.close()
    restore_frozen(ckpt.model.llm, kept)
    going_on = (optimizer, scheduler) if step < cfg.max_steps else (None, None)  # stop_after: it can go on later
    return _finish(cfg, out, ckpt, step_module, step, (loss_value, evals), accelerator, base, going_on)


def run_adapters(trainable: Path, cfg):
    """The run's LoRA adapters as saved in its trainable file, with their settings: what its checkpoint's LLM holds
    merged over the base. None where it trained none, or where its base checkpoint held adapters merged already
    (this run's alone are not all the checkpoint's LLM holds: its bundles get a merged decoder)."""
    from falcon_audio_edge.checkpoint import ADAPTER_NAME

    if "lora" not in cfg.train or (Path(cfg.checkpoint) / ADAPTER_NAME).is_file():
        return None
    from safetensors.torch import load_file

    return {k: v for k, v in load_file(str(trainable)).items() if k.startswith("llm.")}, cfg.lora_settings


def _finish(cfg, out: Path, ckpt, step_module, step: int, losses, accelerator, base: str, going_on) -> TrainResult:
    trainable = out / "trainable.safetensors"
    merged = out / "checkpoint"
    if accelerator.is_main_process:
        save_state(out, step, step_module, *going_on, cfg, base)
        save_trainable(ckpt.model, trainable, cfg)
        model = ckpt.model
        if cfg.load_in_4bit:  # the adapters merge into the full-precision base, not into its NF4 copy
            model = full_precision_model(cfg.checkpoint, model, cfg.lora_settings)
        elif "lora" in cfg.train:
            model.llm = model.llm.merge_and_unload()
        adapter = run_adapters(trainable, cfg)
        save_checkpoint(model.float().eval(), ckpt.tokenizer, merged, force=True, adapter=adapter)
        if step_module.chars is not None:  # beside the run's weights, and in its checkpoint for fa-edge export
            head = to_char_head(step_module.chars.float().eval())
            for folder in (out, merged):
                atomic_file(folder / CHAR_HEAD_FILE, head.save)
    accelerator.wait_for_everyone()
    heads = out / CHAR_HEAD_FILE if step_module.chars is not None else None
    return TrainResult(step, losses[0], losses[1], merged, trainable, heads)

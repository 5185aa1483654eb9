"""The PyTorch reference backend: the checkpoint run in transformers, same conversation loop."""

from __future__ import annotations

import inspect
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from falcon_audio_edge.checkpoint import Checkpoint, load_checkpoint
from falcon_audio_edge.errors import ConfigError
from falcon_audio_edge.runtime.charnet import CHAR_HEAD_FILE, load_char_head
from falcon_audio_edge.runtime.engine import AudioChat


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2 byte-level alphabet: the printable character each byte is written as -> the byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


class TorchBackend:
    def __init__(self, ckpt: Checkpoint, dtype: torch.dtype = torch.float32):
        self.dtype = dtype
        self.model = ckpt.model.to(dtype)
        self.tokenizer = ckpt.tokenizer
        self.bos_id = self.tokenizer.bos_token_id
        self.special_ids = set(self.tokenizer.all_special_ids) | {
            i for i, t in self.tokenizer.added_tokens_decoder.items() if t.special
        }
        chars = Path(ckpt.path) / CHAR_HEAD_FILE
        self.char_head = load_char_head(chars, ckpt.dims.decoder.hidden) if chars.is_file() else None
        self.has_char_head = self.char_head is not None
        self.cache = None
        self.n_past = 0
        self._logits: np.ndarray | None = None

    def encode(self, mel: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = self.model.encode_audio(torch.from_numpy(mel).to(self.dtype)[None])
            return out[0].float().numpy()  # (1, N, H) -> (N, H)

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        """As the bundle's: special tokens parsed only with ``special``."""
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=not special)["input_ids"]

    def preload_ctc(self) -> None:
        """Nothing to read ahead: the head's weights are in the loaded checkpoint."""

    def ctc_posteriors(self, embeds: np.ndarray) -> Any:
        if self.model.ctc is None:
            raise ConfigError(f"this checkpoint ({self.model.dims.name}) has no CTC head")
        with torch.no_grad():
            return self.model.ctc_log_probs(torch.from_numpy(embeds).to(self.dtype)).float().numpy()

    def char_log_probs(self, embeds: np.ndarray) -> np.ndarray:
        """The checkpoint's character head (char_head.npz beside its weights: the same numpy code as the bundle's)."""
        if self.char_head is None:
            raise ConfigError(f"this checkpoint ({self.model.dims.name}) has no character head ({CHAR_HEAD_FILE})")
        return self.char_head.log_probs(embeds)

    def token_bytes(self, token: int) -> bytes:
        piece = None if token in self.special_ids else self.tokenizer.convert_ids_to_tokens(token)
        if piece is None:  # special, or a padding id past the tokenizer (an UNUSED token in the GGUF)
            return b""
        table = _byte_decoder()
        return bytes(table[c] for c in piece)

    def feed_tokens(self, ids: list[int]) -> None:
        with torch.no_grad():
            self._forward(self.model.embed_tokens(torch.tensor([ids])))

    def feed_embeddings(self, embeds: np.ndarray) -> None:
        self._forward(torch.from_numpy(np.ascontiguousarray(embeds, dtype=np.float32)).to(self.dtype)[None])

    def token_rows(self, ids: list[int]) -> np.ndarray:
        """The input embedding rows of ``ids`` (N, H), float32 (exact for a bfloat16 model too)."""
        with torch.no_grad():
            return self.model.embed_tokens(torch.tensor(ids, dtype=torch.long)).float().numpy()

    def _forward(self, embeds: torch.Tensor) -> None:
        n = embeds.shape[1]
        positions = torch.arange(self.n_past, self.n_past + n)[None]
        with torch.no_grad():
            out = self.model.llm(inputs_embeds=embeds, use_cache=True, position_ids=positions, **self._cache_kw())
        self.cache = out.cache if hasattr(out, "cache") else out.past_key_values
        self.n_past += n
        self._logits = out.logits[0, -1].float().numpy()

    def _cache_kw(self) -> dict:
        """transformers >= 5.24 names the KV cache argument ``cache``; older ones ``past_key_values``."""
        name = "cache" if "cache" in inspect.signature(self.model.llm.forward).parameters else "past_key_values"
        return {name: self.cache}

    def logits(self) -> np.ndarray:
        assert self._logits is not None, "feed something first"
        return self._logits.copy()

    def reset(self, positions: int | None = None) -> None:
        """``positions`` is a bound for the next turns, which a growing PyTorch cache does not need."""
        self.cache, self.n_past, self._logits = None, 0, None

    def truncate(self, n_past: int) -> None:
        if n_past == 0:
            self.reset()
        elif n_past < self.n_past:
            self.cache.crop(n_past - self.n_past)  # negative: drop that many (old and new transformers alike)
            self.n_past = n_past

    def close(self) -> None:
        self.reset()


def open_checkpoint(path: str | Path, threads: int = 0, dtype: str = "float32") -> AudioChat:
    """Load a checkpoint and start a conversation on the PyTorch reference (float32 or bfloat16)."""
    if dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"dtype must be float32 or bfloat16, got {dtype!r}")
    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    ckpt = load_checkpoint(path)
    chat = AudioChat(TorchBackend(ckpt, getattr(torch, dtype)), ckpt.dims)
    chat.load_ms = (time.perf_counter() - t0) * 1e3
    return chat

"""The GGUF decoder through llama-cpp-python's low-level API, with audio embeddings injected.

Text goes in as token batches; audio goes in as a ``llama_batch`` made by
``llama_batch_init(n, n_embd, 1)`` whose ``embd`` holds the embeddings. The KV
cache is kept across calls, so a conversation never re-reads its history.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from falcon_audio_edge.errors import BundleError, ConfigError, ContextFullError, FaEdgeError
from falcon_audio_edge.runtime.extra_bufts import model_params
from falcon_audio_edge.settings import BEAM_SEQUENCES, DEFAULT_N_CTX
from falcon_audio_edge.settings import MAX_BEAM_SIZE as MAX_BEAMS

_LOG_CALLBACK = None
CONTEXT_STEP = 256  # a context sized to its need is a multiple of this many positions


def silence_llama_logs(lc) -> None:
    """llama.cpp logs every load to stderr; keep the terminal for the answer."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is None:
        _LOG_CALLBACK = lc.llama_log_callback(lambda level, text, user_data: None)
        lc.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))


def context_size(lc, model, path: Path, requested: int | None) -> int:
    """The context to create: DEFAULT_N_CTX or the model's trained context when none is asked for; one larger than
    the model was trained for, or whose KV cache would not fit in the memory available, is refused."""
    trained = lc.llama_model_n_ctx_train(model)
    if requested is None:
        return min(DEFAULT_N_CTX, trained)
    if requested > trained:
        raise ConfigError(f"n_ctx={requested} is more than {path.name} was trained for ({trained} positions)")
    head_dim = lc.llama_model_n_embd(model) // lc.llama_model_n_head(model)
    kv_bytes = 2 * 2 * lc.llama_model_n_layer(model) * lc.llama_model_n_head_kv(model) * head_dim * requested  # K+V f16
    available = available_memory()
    if available is not None and kv_bytes > 0.8 * available:
        raise ConfigError(f"n_ctx={requested} needs about {kv_bytes / 2**30:.1f} GB of KV cache; "
                          f"{available / 2**30:.1f} GB of memory is available")  # fmt: skip
    return requested


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo, in bytes (None where there is none)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class LoadedModel:
    """A llama.cpp model, freed when the last context using it closes (a bundle's listening context and its
    answering context share one)."""

    def __init__(self, path: Path):
        import llama_cpp as lc

        self._lc, self.path, self.users = lc, path, 0
        silence_llama_logs(lc)
        lc.llama_backend_init()
        self.ptr = lc.llama_model_load_from_file(str(path).encode(), model_params(lc))
        if not self.ptr:
            raise BundleError(f"llama.cpp could not load {path}")

    def take(self):
        if not self.ptr:
            raise FaEdgeError(f"{self.path} was closed")
        self.users += 1
        return self.ptr

    def release(self) -> None:
        self.users -= 1
        if self.users <= 0 and self.ptr:
            self._lc.llama_model_free(self.ptr)  # its LoRA adapters with it
            self.ptr = None


class LlamaDecoder:
    """One llama.cpp context (on its own model, or one ``shared`` with another context), fed token or embedding
    batches, KV cache kept. ``adapter``: a LoRA adapter GGUF this context applies (at the scale it was trained
    with)."""

    def __init__(
        self, path: Path, n_ctx: int | None, n_batch: int, n_threads: int,
        shared: LoadedModel | None = None, adapter: Path | None = None,
    ):  # fmt: skip
        import llama_cpp as lc

        if n_batch < BEAM_SEQUENCES:  # llama.cpp would abort the process in llama_init_from_model
            raise FaEdgeError(f"n_batch must be >= {BEAM_SEQUENCES} (the KV sequences beam search uses), got {n_batch}")
        self._lc, self.path, self.n_batch, self._n_threads = lc, path, n_batch, n_threads
        self.loaded = shared or LoadedModel(path)
        self.model = self.loaded.take()
        self.ctx, self._lora = None, None
        try:
            self.full_ctx = context_size(lc, self.model, path, n_ctx)  # what a conversation gets
            self._make_context(self.full_ctx)
            if adapter is not None:
                self._lora = lc.llama_adapter_lora_init(self.model, str(adapter).encode())  # freed with the model
                if not self._lora:
                    raise BundleError(f"llama.cpp could not load the LoRA adapter {adapter} onto {path}")
                self._apply_adapter()
        except FaEdgeError:
            if self.ctx:
                lc.llama_free(self.ctx)
                self.ctx = None
            self.loaded.release()
            self.model = None
            raise
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.n_embd = lc.llama_model_n_embd(self.model)
        self.n_vocab = lc.llama_vocab_n_tokens(self.vocab)
        self.n_past = 0  # positions of the conversation, the unfed tokens included
        # a finished beam search's tokens: fed when the conversation goes on, never where it is reset first (a
        # transcription heard in pieces starts each piece afresh)
        self._unfed: list[int] = []
        self.bos_id = lc.llama_vocab_bos(self.vocab)
        self.eos_id = lc.llama_vocab_eos(self.vocab)
        self._tokens = lc.llama_batch_init(n_batch, 0, 1)
        self._beams: list[int] | None = None  # while a beam search runs: each live hypothesis's sequence id
        self._beam_pos = 0
        self._embeds = lc.llama_batch_init(n_batch, self.n_embd, 1)

    def _make_context(self, n_ctx: int) -> None:
        """A fresh context of ``n_ctx`` positions on the model, KV cache empty; the one before it is freed once the
        new one exists (where it cannot be made, the old one stays)."""
        lc = self._lc
        cparams = lc.llama_context_default_params()
        cparams.n_ctx, cparams.n_batch, cparams.n_ubatch = n_ctx, self.n_batch, self.n_batch
        cparams.n_threads, cparams.n_threads_batch = self._n_threads, self._n_threads
        # beam search keeps each hypothesis in a sequence of its own; one unified cache: a copied prefix is shared
        cparams.n_seq_max, cparams.kv_unified = BEAM_SEQUENCES, True
        ctx = lc.llama_init_from_model(self.model, cparams)
        if not ctx:
            raise BundleError(f"llama.cpp could not create a context for {self.path} (n_ctx={n_ctx})")
        if self.ctx:
            lc.llama_free(self.ctx)
        self.ctx, self.n_ctx = ctx, lc.llama_n_ctx(ctx)

    def _apply_adapter(self) -> None:
        loras, scales = (self._lc.llama_adapter_lora_p_ctypes * 1)(self._lora), (ctypes.c_float * 1)(1.0)
        if self._lc.llama_set_adapters_lora(self.ctx, loras, 1, scales) != 0:
            raise BundleError(f"llama.cpp could not apply the LoRA adapter to {self.path}")

    def close(self) -> None:
        lc = self._lc
        if getattr(self, "model", None):
            lc.llama_batch_free(self._tokens)
            lc.llama_batch_free(self._embeds)
            if self.ctx:
                lc.llama_free(self.ctx)
            self.loaded.release()
            self.ctx = self.model = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # -- text --
    def tokenize(self, text: str, special: bool = True) -> list[int]:
        """Token ids of ``text``, no BOS added; special tokens parsed only with ``special`` (the chat template's
        pieces, never a user's text: ``<|im_end|>`` typed or heard stays text)."""
        data = text.encode("utf-8")
        buf = (self._lc.llama_token * (len(data) + 8))()
        n = self._lc.llama_tokenize(self.vocab, data, len(data), buf, len(buf), False, special)
        if n < 0:
            raise FaEdgeError(f"tokenization needs {-n} tokens, more than the buffer")
        return list(buf[:n])

    def token_bytes(self, token: int) -> bytes:
        """The bytes a token stands for; empty for control tokens."""
        buf = ctypes.create_string_buffer(64)
        n = self._lc.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._lc.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        return buf.raw[:n]

    # -- decoding --
    def _room(self, n: int) -> None:
        if self.n_past + n > self.n_ctx:
            raise ContextFullError(
                f"the conversation needs {self.n_past + n} positions, more than the context n_ctx={self.n_ctx}; "
                "reset the conversation or raise n_ctx"
            )

    def feed_tokens(self, ids: list[int]) -> None:
        self._room(len(ids))  # n_past counts the unfed tokens already
        unfed, self._unfed = self._unfed, []
        self.n_past -= len(unfed)
        ids = unfed + list(ids)
        for start in range(0, len(ids), self.n_batch):
            chunk = ids[start : start + self.n_batch]
            batch = self._tokens
            for i, tok in enumerate(chunk):
                batch.token[i] = tok
                self._set_position(batch, i, last=start + i == len(ids) - 1)
            batch.n_tokens = len(chunk)
            self._decode(batch)

    def feed_embeddings(self, embeds: np.ndarray) -> None:
        """Audio embeddings (N, n_embd) float32 into the KV cache at the next N positions."""
        embeds = np.ascontiguousarray(embeds, dtype=np.float32)
        if embeds.ndim != 2 or embeds.shape[1] != self.n_embd:
            raise FaEdgeError(f"embeddings must be (N, {self.n_embd}), got {embeds.shape}")
        self._feed_unfed()
        self._room(len(embeds))
        for start in range(0, len(embeds), self.n_batch):
            chunk = embeds[start : start + self.n_batch]
            batch = self._embeds
            ctypes.memmove(batch.embd, chunk.ctypes.data, chunk.nbytes)
            for i in range(len(chunk)):
                self._set_position(batch, i, last=start + i == len(embeds) - 1)
            batch.n_tokens = len(chunk)
            self._decode(batch)

    def _feed_unfed(self) -> None:
        if self._unfed:
            self.feed_tokens([])

    def _set_position(self, batch, i: int, last: bool) -> None:
        batch.pos[i] = self.n_past + i
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = 0
        batch.logits[i] = 1 if last else 0

    def _decode(self, batch) -> None:
        rc = self._lc.llama_decode(self.ctx, batch)
        if rc != 0:
            raise FaEdgeError(f"llama_decode failed with code {rc}")
        self.n_past += batch.n_tokens

    def logits(self) -> np.ndarray:
        """Next-token logits after the last fed position, (n_vocab,) float32 (a copy)."""
        self._feed_unfed()
        ptr = self._lc.llama_get_logits_ith(self.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    # -- beam search: the conversation is sequence 0; hypotheses branch off it --
    def beams_begin(self) -> None:
        """Start a beam search from the conversation so far (the one hypothesis: sequence 0 itself)."""
        self._feed_unfed()
        self._beams, self._beam_pos = [0], self.n_past

    def beams_step(self, parents: list[int], tokens: list[int]) -> np.ndarray:
        """The next hypotheses: ``parents[j]`` (an index into the current ones) extended by ``tokens[j]``.
        Returns their next-token logits, (len(tokens), n_vocab) float32."""
        lc, mem = self._lc, self._lc.llama_get_memory(self.ctx)
        if self._beams is None or len(tokens) != len(parents) or not 1 <= len(tokens) <= MAX_BEAMS:
            raise FaEdgeError(f"beams_step needs 1 to {MAX_BEAMS} (parent, token) pairs after beams_begin")
        if self._beam_pos + 1 > self.n_ctx:
            raise ContextFullError(f"beam search reached the context size n_ctx={self.n_ctx}; reset or raise n_ctx")
        fresh = [s for s in range(1, BEAM_SEQUENCES) if s not in self._beams][: len(tokens)]
        for seq, parent in zip(fresh, parents, strict=True):
            lc.llama_memory_seq_cp(mem, self._beams[parent], seq, -1, -1)  # shares the cells: no copy
        self._drop_beams()
        batch = self._tokens
        for i, (seq, tok) in enumerate(zip(fresh, tokens, strict=True)):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = tok, self._beam_pos, 1, 1
            batch.seq_id[i][0] = seq
        batch.n_tokens = len(tokens)
        rc = lc.llama_decode(self.ctx, batch)
        if rc != 0:
            raise FaEdgeError(f"llama_decode failed with code {rc} in beam search (KV cache full? raise n_ctx)")
        self._beams, self._beam_pos = fresh, self._beam_pos + 1
        rows = [
            np.ctypeslib.as_array(lc.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,))
            for i in range(len(tokens))
        ]
        return np.stack(rows)  # (B, V) copies

    def beams_end(self, tokens: list[int]) -> None:
        """End the search: every hypothesis dropped, ``tokens`` (the chosen one) the conversation's next ones,
        fed to the decoder when it goes on (checked for room now)."""
        if self._beams is not None:
            self._drop_beams()
            self._beams = None
        self._room(len(tokens))
        self._unfed += tokens
        self.n_past += len(tokens)

    def _drop_beams(self) -> None:
        mem = self._lc.llama_get_memory(self.ctx)
        for seq in self._beams or []:
            if seq != 0:  # sequence 0 is the conversation
                self._lc.llama_memory_seq_rm(mem, seq, -1, -1)

    def reset(self, positions: int | None = None) -> None:
        """Forget the conversation. ``positions``: the next one needs no more than these (a listen-first piece),
        so the context is made that small (rounded up to CONTEXT_STEP), its KV cache with it, until a reset
        without them gives the whole context back; a context is re-made only where its size changes."""
        self.beams_end([])
        self._unfed, self.n_past = [], 0
        want = self.full_ctx if positions is None else min(self.full_ctx, -(-positions // CONTEXT_STEP) * CONTEXT_STEP)
        if want != self.n_ctx:
            try:
                self._make_context(want)
            except FaEdgeError:  # the context as it was, emptied as a reset leaves it
                self._lc.llama_memory_clear(self._lc.llama_get_memory(self.ctx), True)
                raise
            if self._lora:
                self._apply_adapter()
            return
        self._lc.llama_memory_clear(self._lc.llama_get_memory(self.ctx), True)

    def truncate(self, n_past: int) -> None:
        """Forget every position from ``n_past`` on (the logits are stale until the next feed)."""
        self._feed_unfed()
        if not 0 <= n_past <= self.n_past:
            raise FaEdgeError(f"cannot truncate to {n_past}: the cache holds {self.n_past} positions")
        if not self._lc.llama_memory_seq_rm(self._lc.llama_get_memory(self.ctx), 0, n_past, -1):
            raise FaEdgeError(f"llama.cpp could not drop the positions from {n_past} on")
        self.n_past = n_past

"""The bundle backend: onnxruntime encoder + llama.cpp decoder. No torch, no transformers."""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from falcon_audio_edge.errors import BundleError
from falcon_audio_edge.runtime import blas
from falcon_audio_edge.runtime.bundle import Bundle, read_bundle
from falcon_audio_edge.runtime.charnet import CharHead, load_char_head
from falcon_audio_edge.runtime.ctc import CTCHead, load_ctc_head
from falcon_audio_edge.runtime.decoder import LlamaDecoder, LoadedModel
from falcon_audio_edge.runtime.encoder import OnnxEncoder
from falcon_audio_edge.runtime.engine import AudioChat
from falcon_audio_edge.runtime.gguf_tensor import TokenRows
from falcon_audio_edge.settings import RuntimeSettings


class BundleBackend:
    _holds_blas = False  # True from a loaded bundle's start to its close; a TextBackend never holds it

    def __init__(self, bundle: Bundle, settings: RuntimeSettings):
        self.encoder = OnnxEncoder(bundle.encoder_path, settings.n_threads)
        self.decoder = LlamaDecoder(bundle.decoder_path, settings.n_ctx, settings.n_batch, settings.n_threads,
                                    adapter=bundle.adapter_path)  # fmt: skip
        dec = bundle.dims.decoder
        if self.decoder.n_embd != dec.hidden or self.decoder.n_vocab != dec.vocab_size:
            raise BundleError(
                f"{bundle.decoder_path}: n_embd={self.decoder.n_embd}, n_vocab={self.decoder.n_vocab} "
                f"do not match the manifest's hidden={dec.hidden}, vocab_size={dec.vocab_size}"
            )
        self.bos_id = self.decoder.bos_id if self.decoder.bos_id >= 0 else None
        self.bundle = bundle
        self._rows = TokenRows(bundle.decoder_path, dec.hidden)  # the text around the audio, fed as embeddings
        self._ctc: CTCHead | None = None
        self._ctc_loading: Future | None = None
        self.has_char_head = bundle.char_path is not None
        self._chars: CharHead | None = None
        blas.hold()  # numpy's BLAS on one thread while the bundle is open (runtime/blas.py)
        self._holds_blas = True

    def _load_ctc(self) -> CTCHead:
        dec = self.bundle.dims.decoder
        return load_ctc_head(
            self.bundle.ctc_path, self.bundle.decoder_path, dec.vocab_size, dec.hidden, self._rows.tensor()
        )  # the header walked once for the rows and the table

    def preload_ctc(self) -> None:
        """Start reading the CTC head's token table in a background thread (a tenth of a second for SmolLM2's,
        more for a large vocabulary), and where the token rows' table is in the decoder GGUF, so that the first
        transcription does not wait for them; errors surface at that use."""
        if self._ctc is None and self._ctc_loading is None:
            pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ctc-head")
            self._ctc_loading = pool.submit(self._preload)
            pool.shutdown(wait=False)  # the thread ends with its one task; nothing waits for it here

    def _preload(self) -> CTCHead | None:
        if self.bundle.ctc_path is None:
            self._rows.tensor()
            return None
        return self._load_ctc()  # the rows' table found on the way

    def ctc_posteriors(self, embeds: np.ndarray) -> Any:
        """The bundle's CTC head on audio embeddings, (T, H) -> (T, 1 + V); its token table is read from the
        GGUF on first use (only transcriptions that ask for CTC guidance pay for it) or by ``preload_ctc``."""
        if self.bundle.ctc_path is None:
            raise BundleError(f"bundle {self.bundle.path} has no CTC head (its model was trained without one)")
        if self._ctc is None:
            loading, self._ctc_loading = self._ctc_loading, None
            self._ctc = (loading.result() if loading is not None else None) or self._load_ctc()
        return self._ctc.posteriors(embeds)

    def char_log_probs(self, embeds: np.ndarray) -> np.ndarray:
        """The bundle's character CTC head on audio embeddings, (T, H) -> (kT, 1 + L) (read on first use)."""
        if self.bundle.char_path is None:
            raise BundleError(f"bundle {self.bundle.path} has no character head")
        if self._chars is None:
            self._chars = load_char_head(self.bundle.char_path, self.bundle.dims.decoder.hidden)
        return self._chars.log_probs(embeds)

    @property
    def n_past(self) -> int:
        return self.decoder.n_past

    def encode(self, mel: np.ndarray) -> np.ndarray:
        return self.encoder(mel)

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        return self.decoder.tokenize(text, special)

    def token_bytes(self, token: int) -> bytes:
        return self.decoder.token_bytes(token)

    def feed_tokens(self, ids: list[int]) -> None:
        self.decoder.feed_tokens(ids)

    def feed_embeddings(self, embeds: np.ndarray) -> None:
        self.decoder.feed_embeddings(embeds)

    def token_rows(self, ids: list[int]) -> np.ndarray:
        """The decoder's input embedding rows of ``ids`` (N, H): fed as embeddings, the tokens' own logits."""
        return self._rows(ids)

    def logits(self) -> np.ndarray:
        return self.decoder.logits()

    def beams_begin(self) -> None:
        self.decoder.beams_begin()

    def beams_step(self, parents: list[int], tokens: list[int]) -> np.ndarray:
        return self.decoder.beams_step(parents, tokens)

    def beams_end(self, tokens: list[int]) -> None:
        self.decoder.beams_end(tokens)

    def reset(self, positions: int | None = None) -> None:
        self.decoder.reset(positions)

    def truncate(self, n_past: int) -> None:
        self.decoder.truncate(n_past)

    def close(self) -> None:
        self.decoder.close()
        if self._holds_blas:
            self._holds_blas = False
            blas.release()


class TextBackend(BundleBackend):
    """A text-only decoder (a bundle's answer model: answer.gguf, or decoder.gguf without the adapter, ``shared``
    with the listening context): the bundle backend's text side, no encoder, no CTC head."""

    def __init__(self, path: Path, settings: RuntimeSettings, shared: LoadedModel | None = None):
        # not super().__init__: it loads an encoder
        self.decoder = LlamaDecoder(path, settings.n_ctx, settings.n_batch, settings.n_threads, shared=shared)
        self.bos_id = self.decoder.bos_id if self.decoder.bos_id >= 0 else None
        self.has_char_head = False

    def encode(self, mel: np.ndarray) -> np.ndarray:
        raise BundleError("the answer model takes text only")

    def preload_ctc(self) -> None:
        """Nothing to read ahead: the answer model has no CTC head."""

    def ctc_posteriors(self, embeds: np.ndarray) -> Any:
        raise BundleError("the answer model takes text only")

    def char_log_probs(self, embeds: np.ndarray) -> np.ndarray:
        raise BundleError("the answer model takes text only")

    def token_rows(self, ids: list[int]) -> np.ndarray:
        raise BundleError("the answer model takes text only")


def open_bundle(path: str | Path, settings: RuntimeSettings | None = None) -> AudioChat:
    """Load a bundle (checksums verified) and start a conversation on it. Its answer model (answer.gguf), if it
    has one, is loaded on the first listen-first turn."""
    settings = settings or RuntimeSettings()
    t0 = time.perf_counter()
    bundle = read_bundle(path, verify=settings.verify_checksums)
    chat = AudioChat(BundleBackend(bundle, settings), bundle.dims)
    chat.decoding = bundle.decoding
    if bundle.answer_path is not None:
        answer = bundle.answer_path
        chat.open_answerer = lambda: AudioChat(TextBackend(answer, settings), bundle.dims)
    elif bundle.adapter_path is not None:  # the base LLM answers: a context of its own on the one loaded model
        loaded = chat.backend.decoder.loaded
        chat.open_answerer = lambda: AudioChat(TextBackend(bundle.decoder_path, settings, loaded), bundle.dims)
    chat.load_ms = (time.perf_counter() - t0) * 1e3
    return chat

"""``AudioChat``'s listen-first side: the listening model hears pieces of a question (``runtime/listen.py``) and the
bundle's answer model, a text conversation of its own, answers the transcript."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Any

import numpy as np

from falcon_audio_edge.audio import HOP_LENGTH, SAMPLE_RATE
from falcon_audio_edge.errors import FaEdgeError
from falcon_audio_edge.runtime.listen import Hearing, listening_positions
from falcon_audio_edge.runtime.turn import AskResult, Turn
from falcon_audio_edge.settings import TRANSCRIBE_PROMPT, GenerationSettings, guidance_for

LISTEN_MAX_TOKENS = 448  # a listen-first transcription: a stop for a runaway, well above 2 x 30 s of speech


class ListensFirst:
    """Uses ``AudioChat``'s backend, dims, layout, decoding settings, turn loop and listening reset."""

    backend: Any
    dims: Any
    layout: Any
    decoding: Any
    load_ms: float
    open_answerer: Any
    _answerer: Any
    _stop: threading.Event | None

    def hear_piece(
        self, samples: np.ndarray, gen: GenerationSettings, positions: int, stop: threading.Event | None = None
    ) -> AskResult:
        """One piece of a listen-first turn transcribed: a fresh turn of the listening model, its context made
        ``positions`` long (``piece_positions``; it stays so until a turn of a conversation on this model).
        ``stop`` set: Interrupted at the next token (the result is no longer wanted)."""
        self._check_heads(gen)
        self.reset_listening(positions)
        self._stop = stop
        try:
            return Turn(self._turn(samples, TRANSCRIBE_PROMPT, gen)).run()
        finally:
            self._stop = None

    def piece_positions(self, seconds: float, gen: GenerationSettings) -> int:
        """The most positions a fresh transcription turn of ``seconds`` of audio fills: its text, its audio tokens
        and ``gen.max_tokens`` for each hypothesis of its beam."""
        before, _ = self.layout.around_audio(None, True)
        text = self._bos_ids() + self.backend.tokenize(before) + self._ids_after(TRANSCRIBE_PROMPT, True)
        audio = self.dims.n_audio_tokens(int(seconds * SAMPLE_RATE) // HOP_LENGTH)
        return len(text) + audio + max(1, gen.beam_size) * gen.max_tokens

    def start_hearing(
        self, generation: GenerationSettings | None = None, slack_s: float = 0.0,
        listening: GenerationSettings | None = None,
    ) -> Hearing:  # fmt: skip
        """The transcription of a listen-first turn whose audio is still arriving: ``add`` the audio to it as it
        comes, then ``ask(utterance, ..., listen_first=True, hearing=it)``. ``slack_s``: how much of the audio
        added last the utterance may leave out (an endpointer's trimmed end silence); ``listening`` as for
        ``ask``."""
        self.answerer()  # refused at once where the bundle has no answer model
        return Hearing(self, listening or self.listening_for(generation or GenerationSettings()), slack_s)

    def prepare_listen_first(self) -> None:
        """Load what a listen-first turn needs before the first one: the answer model now, the CTC head's token
        table and the rows of the text around the audio in the background (an assistant calls this at start, while
        nobody has spoken yet)."""
        self.answerer()
        self.backend.preload_ctc()

    def answerer(self) -> Any:  # an AudioChat
        """The bundle's answer model (loaded on first use; its load time joins ``load_ms``)."""
        if self._answerer is None:
            if self.open_answerer is None:
                raise FaEdgeError("listen-first needs a bundle with an answer model (fa-edge export --answer-llm)")
            t0 = time.perf_counter()
            # the listening model hears pieces from now on: its context shrinks before the answerer's is made
            listen = self.listening_for(GenerationSettings(**self.decoding.search()))  # the bundle's own search
            self.reset_listening(listening_positions(self, listen))
            self._answerer = self.open_answerer()
            self.load_ms += (time.perf_counter() - t0) * 1e3
        return self._answerer

    def listening_for(
        self, gen: GenerationSettings, ctc: float | None = None, chars: float | None = None
    ) -> GenerationSettings:
        """A listen-first turn's transcription settings: greedy, ``gen``'s beam size and proposals, and the
        weights of the token head and the character head as asked (0: off), or where neither is asked the
        model's transcription defaults (``with_weights``). Without weights asked, ``gen``'s own stand for them
        where it has any (there a 0 cannot say "off")."""
        if ctc is None and chars is None and gen.guide_weight:
            ctc, chars = gen.ctc_weight, gen.char_weight
        listen = GenerationSettings(
            max_tokens=LISTEN_MAX_TOKENS,
            beam_size=gen.beam_size,
            ctc_candidates=gen.ctc_candidates,
            ctc_proposal_prob=gen.ctc_proposal_prob,
        )
        return self.with_weights(listen, TRANSCRIBE_PROMPT, ctc, chars)

    def with_weights(
        self, gen: GenerationSettings, prompt: str | None, ctc: float | None = None, chars: float | None = None
    ) -> GenerationSettings:
        """``gen`` with the token head's and the character head's weights of a turn with ``prompt`` on this
        model: as asked (None: not asked; 0: off), else for a transcription the bundle's (``self.decoding``),
        else the model's defaults (``settings.guidance_for``: guidance for a transcription by a model with heads)."""
        if ctc is None and chars is None and prompt == TRANSCRIBE_PROMPT:
            ctc, chars = self.decoding.ctc_weight, self.decoding.char_weight
        weight, char_weight = guidance_for(prompt, self.has_ctc_head, self.has_char_head, ctc, chars)
        return replace(gen, ctc_weight=weight, char_weight=char_weight)

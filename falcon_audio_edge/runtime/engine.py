"""The conversation: prompt + audio embeddings in, streamed tokens out, KV cache kept across turns.

``AudioChat`` runs on a ``Backend``: the bundle (onnxruntime + llama.cpp) or the
PyTorch reference (``falcon_audio_edge.reference``). Both go through this same
loop, so their outputs can be compared token by token.
"""

from __future__ import annotations

import codecs
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from falcon_audio_edge.audio import Audio, load_audio
from falcon_audio_edge.config import ModelDims
from falcon_audio_edge.errors import ContextFullError, FaEdgeError, Interrupted
from falcon_audio_edge.frontend import AudioFeatures, audio_features, encode_features
from falcon_audio_edge.runtime.beam import ReplayedBeams, beam_search
from falcon_audio_edge.runtime.begun import Begun, StartsAhead, feed_to
from falcon_audio_edge.runtime.chars import guide_scorer
from falcon_audio_edge.runtime.ctc import guided_choice, proposals_of
from falcon_audio_edge.runtime.listen import Hearing, listen_first_turn
from falcon_audio_edge.runtime.listening import ListensFirst
from falcon_audio_edge.runtime.stream import AudioStream
from falcon_audio_edge.runtime.turn import AskResult, Timings, Turn, sample_token
from falcon_audio_edge.settings import DecodingSettings, GenerationSettings


class Backend(Protocol):
    """What the conversation needs from an encoder + decoder pair."""

    n_past: int
    bos_id: int | None
    has_char_head: bool  # a character CTC head (runtime/chars.py) reads this model's audio embeddings

    def encode(self, mel: np.ndarray) -> np.ndarray: ...
    def ctc_posteriors(self, embeds: np.ndarray) -> Any: ...
    def preload_ctc(self) -> None: ...
    def char_log_probs(self, embeds: np.ndarray) -> np.ndarray: ...
    def tokenize(self, text: str, special: bool = True) -> list[int]: ...
    def token_bytes(self, token: int) -> bytes: ...
    def feed_tokens(self, ids: list[int]) -> None: ...
    def feed_embeddings(self, embeds: np.ndarray) -> None: ...
    def token_rows(self, ids: list[int]) -> np.ndarray: ...
    def truncate(self, n_past: int) -> None: ...
    def logits(self) -> np.ndarray: ...
    def reset(self, positions: int | None = None) -> None: ...
    def close(self) -> None: ...


class AudioChat(StartsAhead, ListensFirst):
    """A multi-turn conversation with audio turns, on a bundle or on the PyTorch reference."""

    def __init__(self, backend: Backend, dims: ModelDims):
        self.backend = backend
        self.dims = dims
        self.layout = dims.prompt
        eot = backend.tokenize(self.layout.end_of_turn)
        if len(eot) != 1:
            raise FaEdgeError(f"end-of-turn {self.layout.end_of_turn!r} is not one token in the vocab ({eot})")
        self.stop_ids = {eot[0]}
        self._close_previous: list[int] = []
        self._begun: Begun | None = None  # the next turn's start, fed ahead (start_turn, start_text)
        self._stream: AudioStream | None = None  # the next audio turn's windows, fed as they end (start_audio)
        self.turns = 0
        self.load_ms = 0.0  # set by open_bundle / open_checkpoint
        self.open_answerer: Callable[[], AudioChat] | None = None  # set by open_bundle when it has an answer model
        self._answerer: AudioChat | None = None
        self.decoding = DecodingSettings()  # how its transcriptions are searched (open_bundle: the bundle's own)
        self._piece_positions: int | None = None  # the listening context's size while it hears listen-first pieces
        self._stop: threading.Event | None = None  # while a piece is heard: set when its result is no longer wanted

    @property
    def has_ctc_head(self) -> bool:
        return self.dims.audio.ctc_head

    @property
    def has_char_head(self) -> bool:
        return self.backend.has_char_head

    def reset(self) -> None:
        """Forget the conversation (clears the KV cache; the answer model's too)."""
        if self._answerer is not None:
            self._answerer.reset()
        self.reset_listening(self._piece_positions)

    def start_audio(self, prompt: str | None = None, slack_s: float = 0.0) -> AudioStream:
        """``start_turn``, then the utterance's encoder windows fed as each one ends: ``add`` the audio to the
        stream as it comes; the next ``ask`` with audio and the same prompt takes the windows its audio starts with
        and feeds only the rest. ``slack_s`` as for ``start_hearing``; ``cancel_turn`` takes it all back."""
        self.cancel_turn()
        self.start_turn(prompt)
        self._stream = AudioStream(self, prompt, slack_s)
        return self._stream

    def close(self) -> None:
        try:
            if self._stream is not None:
                self._stream.close()
            if self._answerer is not None:
                self._answerer.close()
        finally:
            self.backend.close()

    def __enter__(self) -> AudioChat:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ask(
        self,
        audio: Audio | np.ndarray | str | Path | None,
        prompt: str | None = None,
        generation: GenerationSettings | None = None,
        listen_first: bool = False,
        listening: GenerationSettings | None = None,
        hearing: Hearing | None = None,
    ) -> Turn:
        """Start a turn; with audio None the turn is text only (``prompt`` required). ``listen_first``: the model
        transcribes the audio (CTC-guided if it can), then the bundle's answer model answers the transcript (and
        the prompt after it) as a text turn of its own conversation; ``listening`` sets that transcription
        (``listening_for``; default: ``listening_for(generation)``); ``hearing``: that transcription, begun while
        the audio arrived (``start_hearing``), with its own settings."""
        if audio is None and not prompt:
            raise FaEdgeError("a turn needs audio, a prompt, or both")
        if (listening is not None or hearing is not None) and not listen_first:
            raise FaEdgeError("listening settings are for a listen-first turn's transcription (listen_first=True)")
        if listen_first:
            gen = generation or GenerationSettings()
            listening = self.listening_for(gen) if listening is None else listening
            return Turn(listen_first_turn(self, audio, prompt, gen, listening, hearing))
        generation = generation or GenerationSettings()
        self._check_heads(generation)
        self._conversing()
        return Turn(self._turn(audio, prompt, generation))

    def _check_heads(self, generation: GenerationSettings) -> None:
        if generation.ctc_weight and not self.has_ctc_head:
            raise FaEdgeError(f"ctc_weight={generation.ctc_weight} needs a model with a CTC head; "
                              f"{self.dims.name} was trained without one")  # fmt: skip
        if generation.char_weight and not self.has_char_head:
            raise FaEdgeError(f"char_weight={generation.char_weight} needs a model with a character head "
                              "(python -m falcon_audio_edge.train.charhead)")  # fmt: skip

    def _stopped(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    def _conversing(self) -> None:
        """A turn of a conversation on the listening model: a context made small for listen-first pieces is made
        whole again, afresh (it held a piece's transcription, no part of a conversation)."""
        if self._piece_positions is not None:
            self.reset_listening()

    def reset_listening(self, positions: int | None = None) -> None:
        """Forget what the listening model heard (its conversation), keeping the answer model's. ``positions``:
        no turn until the next conversation needs more (listen-first pieces), so the context may be that small."""
        if self._stream is not None:  # its worker stops before the cache is cleared
            self._stream.close()
        self.backend.reset(positions)
        self._close_previous, self._begun, self._stream, self.turns = [], None, None, 0
        self._piece_positions = positions

    def _ids_after(self, prompt: str | None, audio: bool) -> list[int]:
        """The turn's text after its audio: the prompt (the whole user text of a turn without audio) and the
        template up to the answer."""
        # the user's text (typed, or a transcript) is tokenized as text: roles come only from the template
        user = (f"\n{prompt}" if prompt else "") if audio else (prompt or "")
        ids = self.backend.tokenize(user, special=False) if user else []
        return ids + self.backend.tokenize(self.layout.turn_end + self.layout.assistant_start)

    def _bos_ids(self) -> list[int]:
        """What starts a conversation: the BOS token where the layout adds one and the tokenizer has one."""
        return [self.backend.bos_id] if self.layout.add_bos and self.backend.bos_id is not None else []

    def _prefix_ids(self, text: str) -> list[int]:
        first = self._bos_ids() if self.turns == 0 else []
        return list(self._close_previous) + first + self.backend.tokenize(text)

    def _features(self, audio: Any, timings: Timings) -> tuple[np.ndarray | None, AudioFeatures | None]:
        if audio is None:
            return None, None
        t0 = time.perf_counter()
        if isinstance(audio, (str, Path)):
            audio = load_audio(audio)
        samples, source = (audio.samples, audio.source) if isinstance(audio, Audio) else (audio, "audio")
        features = audio_features(samples, self.dims, source)
        timings.mel_ms = (time.perf_counter() - t0) * 1e3
        return samples, features

    def _embeds(
        self, features: AudioFeatures, fed: list[np.ndarray], guessed: bool, timings: Timings
    ) -> tuple[np.ndarray, int]:
        """The clip's audio embeddings: those of the windows ``fed`` while it arrived (``guessed``: all of them, the
        last part a speculation's), then the rest's, encoded now; and how many of them are in the cache already."""
        t0 = time.perf_counter()
        rest = replace(features, mels=features.mels[len(fed) :], tokens=features.tokens[len(fed) :])
        parts = [*fed, encode_features(rest, self.backend.encode)] if rest.mels and not guessed else fed
        timings.encoder_ms = (time.perf_counter() - t0) * 1e3
        n_fed = sum(len(e) for e in fed)
        return np.concatenate(parts) if parts else np.zeros((0, self.dims.decoder.hidden), np.float32), n_fed

    def prefill(self, audio: Any, prompt: str | None, timings: Timings) -> tuple[int, Any, np.ndarray | None]:
        stream, self._stream = self._stream, None
        try:
            if stream is not None:  # its worker done before anything here uses the cache
                stream.wait()
            samples, features = self._features(audio, timings)
            begun = self._begun
            if begun is not None and (begun.audio != (features is not None) or begun.prompt != prompt and begun.audio):
                self.cancel_turn()  # started for another prompt, or for another kind of turn
                begun = None
            fed, guessed = stream.take(samples) if stream and begun and samples is not None else ([], False)
            embeds, n_fed = self._embeds(features, fed, guessed, timings) if features is not None else (None, 0)
        except BaseException:  # (Ctrl-C too) the turn's start is taken back once its stream's worker has stopped
            if stream is not None:
                stream.close()
            self.cancel_turn()
            raise
        t0 = time.perf_counter()
        before, _ = self.layout.around_audio(None, self.turns == 0)
        ids_after = self._ids_after(prompt, embeds is not None)
        mark, close = (begun.mark, begun.close) if begun else (self.backend.n_past, self._close_previous)
        try:
            self._begun = None
            if begun is None:
                head = self._prefix_ids(before)
                begun = Begun(embeds is not None, prompt, len(head), [], mark, [])
            else:
                head = begun.fed[: begun.head]
            n_before = begun.head
            if embeds is None:  # a text turn: its opening and text in one batch (the part fed ahead kept)
                feed_to(self.backend, begun, head + ids_after)
            elif not guessed:  # (a speculation that guessed the utterance fed it all, with the text after it)
                self._feed_audio([] if begun.fed else head, embeds[n_fed:], ids_after)
        except FaEdgeError:  # the turn is taken back whole (the context is full, or a row or llama.cpp failed): the
            self.backend.truncate(mark)  # conversation before it stays usable
            self._close_previous = list(close)
            raise
        timings.prefill_ms = (time.perf_counter() - t0) * 1e3
        self._close_previous = []
        return n_before + len(ids_after), features, embeds

    def _feed_audio(self, before: list[int], embeds: np.ndarray, after: list[int]) -> None:
        """The text around the audio and the audio in one batch of embeddings, the text as its tokens' own rows
        (the same logits as fed as tokens): one decoder call where three would each pay their own start."""
        rows = self.backend.token_rows(before + after)
        n = len(before)
        self.backend.feed_embeddings(np.concatenate([rows[:n], embeds, rows[n:]]))  # (N + T + M, H)

    def _chooser(self, gen: GenerationSettings, embeds: np.ndarray | None, rng: np.random.Generator):
        """logits -> next token: sampled or greedy, or greedy rescored by the CTC heads (``gen.guide_weight``)."""
        if not gen.guide_weight or embeds is None:
            return lambda logits: sample_token(logits, gen, rng)
        scorer = self._scorer(gen, embeds)
        proposed = proposals_of(scorer, gen.ctc_proposal_prob)

        def choose(logits: np.ndarray) -> int:
            token = guided_choice(logits, scorer, gen.guide_weight, gen.ctc_candidates, proposed)
            if token not in self.stop_ids:
                scorer.advance(token)
            return token

        return choose

    def _scorer(self, gen: GenerationSettings, embeds: np.ndarray):
        return guide_scorer(self.backend, gen, embeds, next(iter(self.stop_ids)), self.has_ctc_head)

    def _tokens(self, gen: GenerationSettings, embeds: np.ndarray | None):
        """The answer's tokens, each fed back after it is yielded; returns the stop reason."""
        choose = self._chooser(gen, embeds, np.random.default_rng(gen.seed))
        for _ in range(gen.max_tokens):
            if self._stopped():
                raise Interrupted("the transcription was stopped: its result is no longer wanted")
            token = choose(self.backend.logits())
            if token in self.stop_ids and not gen.ignore_end_of_turn:
                return "end_of_turn"
            yield token
            try:
                self.backend.feed_tokens([token])
            except ContextFullError:  # the answer so far stays; the next turn will not fit either
                return "context_full"
        return "max_tokens"

    def _searched(self, gen: GenerationSettings, embeds: np.ndarray):
        """The best hypothesis of a CTC-guided beam search (runtime/beam.py), already in the conversation; returns
        the stop reason."""
        end = next(iter(self.stop_ids))
        scorer = self._scorer(gen, embeds)
        beams = self.backend if hasattr(self.backend, "beams_step") else ReplayedBeams(self.backend)
        best = beam_search(beams, self.backend.logits(), scorer, gen, end, self._stopped)
        yield from best.tokens
        return "end_of_turn" if best.ended else "max_tokens"

    def _turn(self, audio: Any, prompt: str | None, gen: GenerationSettings):
        timings = Timings()
        start = time.perf_counter()
        n_prompt, features, embeds = self.prefill(audio, prompt, timings)
        search = gen.guide_weight and gen.beam_size > 1 and embeds is not None
        steps = self._searched(gen, embeds) if search else self._tokens(gen, embeds)
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        tokens: list[int] = []
        pieces: list[str] = []
        first = None
        try:
            while True:
                try:
                    token = next(steps)
                except StopIteration as stop:
                    stop_reason = stop.value
                    break
                tokens.append(token)
                piece = utf8.decode(self.backend.token_bytes(token))
                if first is None:
                    first = time.perf_counter()
                if piece:
                    pieces.append(piece)
                    yield piece
            tail = utf8.decode(b"", final=True)
            if tail:
                pieces.append(tail)
                yield tail
        finally:
            steps.close()
            self._close_previous = self.backend.tokenize(self.layout.assistant_end)
            self.turns += 1
        end = time.perf_counter()
        first = first or end
        timings.first_token_ms = (first - start) * 1e3
        timings.decode_ms = (end - first) * 1e3
        timings.total_ms = (end - start) * 1e3
        timings.tokens_per_s = (len(tokens) - 1) / (end - first) if len(tokens) > 1 and end > first else 0.0
        return AskResult(
            text="".join(pieces),
            tokens=tokens,
            audio_tokens=0 if embeds is None else len(embeds),
            audio_seconds=0.0 if features is None else features.seconds,
            windows=0 if features is None else features.windows,
            prompt_tokens=n_prompt,
            stop_reason=stop_reason,
            timings=timings,
        )

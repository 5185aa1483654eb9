"""How far is a bundle from the PyTorch checkpoint it came from? Measured on the same clips.

Encoder: cosine similarity and max abs diff of the audio embeddings. Decoder: the reference's greedy answer
is teacher-forced through both backends; top-1 agreement and mean KL(reference || bundle) over those
positions. End to end: how often the greedy answers are identical. With transcripts and a transcription
prompt, the word error rate of each.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from falcon_audio_edge.audio import load_audio
from falcon_audio_edge.errors import FaEdgeError
from falcon_audio_edge.files import temp_dir
from falcon_audio_edge.frontend import audio_features, encode_features
from falcon_audio_edge.runtime.ctc import log_softmax
from falcon_audio_edge.runtime.engine import AudioChat, Timings
from falcon_audio_edge.settings import GenerationSettings

BUILTIN_SENTENCES = [
    "What is the capital of France?",
    "Please set a timer for ten minutes.",
    "The quick brown fox jumps over the lazy dog.",
    "How many legs does a spider have?",
    "Turn on the lights in the kitchen.",
]
TRANSCRIBE_PROMPT = "Transcribe the audio."


@dataclass
class VerifyReport:
    clips: int
    encoder_cosine: float  # the lowest over the clips
    encoder_max_abs_diff: float
    top1_agreement: float  # 0..1 over teacher-forced positions
    mean_kl: float  # nats, mean over teacher-forced positions
    greedy_match_rate: float  # 0..1 over clips
    positions: int
    max_tokens: int
    prompt: str | None
    wer: dict[str, float] | None = None  # {"bundle": ..., "reference": ...} where measured

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if data["wer"] is None:
            del data["wer"]
        return data


def builtin_clips(folder: Path, count: int = len(BUILTIN_SENTENCES)) -> list[tuple[Path, str]]:
    """Spoken clips of the built-in sentences, made with espeak-ng."""
    if not shutil.which("espeak-ng"):
        raise FaEdgeError("espeak-ng is needed for the built-in clips; install it or pass --audio files")
    clips = []
    for i, text in enumerate(BUILTIN_SENTENCES[:count]):
        path = folder / f"builtin{i}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "160", "-w", str(path), text], check=True)
        clips.append((path, text))
    return clips


def words(text: str) -> list[str]:
    """Lower-cased words, punctuation removed (the answer comparisons, and the WER's plain ``split``)."""
    return re.sub(r"[^\w\s']", " ", text.lower()).split()


@functools.cache
def _english_normalizer() -> Callable[[str], str]:
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


def english_words(text: str) -> list[str]:
    """Words as English WER is usually scored (Whisper's English normalizer: case and punctuation dropped,
    numbers as digits, British spellings as American, contractions spelled out, hesitations removed)."""
    return _english_normalizer()(text).split()


def exact_share(
    references: Sequence[str], hypotheses: Sequence[str], split: Callable[[str], list[str]] = english_words
) -> float:
    """The share of clips whose hypothesis has the reference's words exactly (after ``split``)."""
    same = sum(split(r) == split(h) for r, h in zip(references, hypotheses, strict=True))
    return same / max(1, len(references))


def word_error_rate(
    references: Sequence[str], hypotheses: Sequence[str], split: Callable[[str], list[str]] = english_words
) -> float:
    """Word-level edit distance over all clips / reference words, both split into words by ``split`` (the
    usual English normalization by default; ``words``: only lower-cased, punctuation removed)."""
    errors = total = 0
    for ref, hyp in zip(references, hypotheses, strict=True):
        r, h = split(ref), split(hyp)
        row = list(range(len(h) + 1))
        for i, rw in enumerate(r, 1):
            prev, row[0] = row[0], i
            for j, hw in enumerate(h, 1):
                prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (rw != hw))
        errors += row[-1]
        total += len(r)
    return errors / max(total, 1)


def forced_logits(chat: AudioChat, samples: np.ndarray, prompt: str | None, tokens: list[int]) -> np.ndarray:
    """Logits at every position of ``tokens`` (plus the one after), teacher-forced: (len + 1, vocab)."""
    chat.reset()
    chat.prefill(samples, prompt, Timings())
    rows = []
    for token in tokens:
        rows.append(chat.backend.logits())
        chat.backend.feed_tokens([token])
    rows.append(chat.backend.logits())
    return np.stack(rows)


def _encoder_stats(bundle: AudioChat, reference: AudioChat, samples: np.ndarray) -> tuple[float, float]:
    features = audio_features(samples, bundle.dims)
    got = encode_features(features, bundle.backend.encode).ravel().astype(np.float64)
    want = encode_features(features, reference.backend.encode).ravel().astype(np.float64)
    cosine = float(got @ want / (np.linalg.norm(got) * np.linalg.norm(want) + 1e-12))
    return cosine, float(np.abs(got - want).max())


def compare(
    bundle: AudioChat,
    reference: AudioChat,
    clips: Sequence[Path],
    prompt: str | None = None,
    max_tokens: int = 32,
    transcripts: Sequence[str] | None = None,
) -> VerifyReport:
    """Run both conversations on the same clips and measure how far apart they are."""
    if not clips:
        raise FaEdgeError("verify needs at least one audio clip")
    gen = GenerationSettings(max_tokens=max_tokens)
    cosines, diffs, agree, kls, matches, texts = [], [], [], [], 0, {"bundle": [], "reference": []}
    for clip in clips:
        samples = load_audio(clip).samples
        cosine, diff = _encoder_stats(bundle, reference, samples)
        cosines.append(cosine)
        diffs.append(diff)
        reference.reset()
        want = reference.ask(samples, prompt, gen).run()
        bundle.reset()
        got = bundle.ask(samples, prompt, gen).run()
        matches += got.tokens == want.tokens
        texts["bundle"].append(got.text)
        texts["reference"].append(want.text)
        ref_lp = log_softmax(forced_logits(reference, samples, prompt, want.tokens))
        bun_lp = log_softmax(forced_logits(bundle, samples, prompt, want.tokens))
        agree.extend(np.argmax(bun_lp, axis=-1) == np.argmax(ref_lp, axis=-1))
        kls.extend((np.exp(ref_lp) * (ref_lp - bun_lp)).sum(axis=-1))
    wer = None
    if transcripts is not None and prompt and "transcribe" in prompt.lower():
        wer = {name: word_error_rate(transcripts, hyps) for name, hyps in texts.items()}
    return VerifyReport(
        clips=len(clips),
        encoder_cosine=min(cosines),
        encoder_max_abs_diff=max(diffs),
        top1_agreement=float(np.mean(agree)),
        mean_kl=float(np.mean(kls)),
        greedy_match_rate=matches / len(clips),
        positions=len(agree),
        max_tokens=max_tokens,
        prompt=prompt,
        wer=wer,
    )


def verify_bundle(
    bundle: str | Path,
    reference: str | Path | AudioChat,
    clips: Sequence[Path] | None = None,
    prompt: str | None = None,
    max_tokens: int = 32,
    n_builtin: int = len(BUILTIN_SENTENCES),
    check_files: bool = True,
) -> VerifyReport:
    """Compare a bundle folder with its checkpoint (a path, or an already open reference conversation)."""
    from falcon_audio_edge.reference import open_checkpoint
    from falcon_audio_edge.runtime.backend import open_bundle
    from falcon_audio_edge.settings import RuntimeSettings

    ref_chat = reference if isinstance(reference, AudioChat) else open_checkpoint(reference)
    with (
        temp_dir() as tmp,
        open_bundle(bundle, RuntimeSettings(verify_checksums=check_files)) as chat,
    ):
        transcripts = None
        if not clips:
            made = builtin_clips(Path(tmp), n_builtin)
            clips, transcripts = [p for p, _ in made], [t for _, t in made]
        if chat.dims != ref_chat.dims:
            raise FaEdgeError(f"bundle {bundle} and the reference checkpoint have different dims")
        return compare(chat, ref_chat, clips, prompt, max_tokens, transcripts)

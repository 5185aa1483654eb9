"""Synthetic voices: new espeak-ng voice variants made from the training variants, one per clip.

espeak-ng ships about fifty English voice variants, and the held-out and dev splits keep six of them away from
training, so a model hears each training variant's vocal tract hundreds of times and learns those voices
rather than voices in general. A synthetic variant starts from a random training variant's file and
changes what makes a voice: every formant frequency scaled by one vocal-tract factor (a shorter or longer
tract moves all formants alike, as in vocal-tract-length perturbation), the formant strengths and widths
scaled, the pitch range moved, and the voice quality lines (voicing, breath, echo, roughness, flutter, tone,
consonants) taken from a second training variant. Only training variants' files are ever read.

espeak-ng takes variants only from its data folder (a variant given by path is silently ignored), so a
``VoiceBank`` is a private copy of that folder, made of links, with one variant file of its own that each
clip rewrites. Its ``--path`` goes with the voice (``Voice.data_path``).
"""

from __future__ import annotations

import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from falcon_audio_edge.errors import SetupError

VARIANT = "fa-edge-synthetic"  # the bank's own variant file, rewritten for each clip
TRACT = (0.88, 1.18)  # vocal-tract factor: every formant frequency scaled by it (about +-2 cm on 17 cm)
FORMANT_JITTER = 0.04  # each formant moves up to 4% more on its own
STRENGTH = (0.7, 1.15)  # formant strengths (peak heights) scaled by one factor
WIDTH = (0.8, 1.4)  # formant widths scaled by one factor
PITCH = (0.85, 1.2)  # the pitch range's both ends scaled by one factor
DEFAULT_PITCH = (82, 118)  # espeak-ng's own pitch range, for a base variant without a pitch line
QUALITY_KEYS = ("voicing", "breath", "breathw", "echo", "roughness", "flutter", "tone", "consonants")
DROPPED_KEYS = ("name", "language", "gender")  # the bank's file names itself


@dataclass(frozen=True)
class SyntheticVoice:
    """What a synthetic variant was made from (saved with the clip's manifest row)."""

    base: str  # the training variant whose file it starts from
    quality: str  # the training variant whose voice quality lines it takes
    tract: float
    strength: float
    width: float
    pitch: float

    def row(self) -> dict:
        factors = {"tract": self.tract, "strength": self.strength, "width": self.width, "pitch": self.pitch}
        return {"base": self.base, "quality": self.quality, **{k: round(v, 3) for k, v in factors.items()}}


def variant_lines(path: Path) -> list[list[str]]:
    """A variant file's settings: one list of fields per line, comments and blank lines dropped."""
    lines = []
    for line in path.read_text(encoding="latin-1").splitlines():
        fields = line.split("//")[0].split()
        if fields and not fields[0].startswith("#"):
            lines.append(fields)
    return lines


def scaled(fields: list[str], index: int, factor: float) -> None:
    """fields[index] (an integer percentage) times ``factor``, in place; a 0 (an unused formant) stays 0."""
    if len(fields) > index:
        fields[index] = str(max(0, round(int(fields[index]) * factor)))


def synthetic_variant(base: list[list[str]], quality: list[list[str]], voice: SyntheticVoice,
                      rng: random.Random) -> str:  # fmt: skip
    """The text of a variant file: ``base``'s settings with ``voice``'s changes and ``quality``'s voice quality."""
    out = [f"name {VARIANT}", "language variant"]
    has_pitch = False
    for fields in base:
        key, fields = fields[0], list(fields)
        if key in DROPPED_KEYS or key in QUALITY_KEYS:
            continue
        if key == "formant" and len(fields) >= 3:  # formant N freq strength width [adjust]
            scaled(fields, 2, voice.tract * rng.uniform(1 - FORMANT_JITTER, 1 + FORMANT_JITTER))
            scaled(fields, 3, voice.strength)
            scaled(fields, 4, voice.width)
        elif key == "pitch" and len(fields) == 3:
            has_pitch = True
            scaled(fields, 1, voice.pitch)
            scaled(fields, 2, voice.pitch)
        out.append(" ".join(fields))
    if not has_pitch:
        out.append(f"pitch {round(DEFAULT_PITCH[0] * voice.pitch)} {round(DEFAULT_PITCH[1] * voice.pitch)}")
    out += [" ".join(fields) for fields in quality if fields[0] in QUALITY_KEYS]
    return "\n".join(out) + "\n"


class VoiceBank:
    """A private espeak-ng data folder (links to the installed one) with one synthetic variant of its own.

    Use as a context manager; ``draw`` writes a fresh variant and returns its description. The folder goes
    when the ``with`` block ends."""

    def __init__(self, data: Path, variants: list[str]):
        self.data = data
        self.variants = [v for v in variants if v]
        missing = [v for v in self.variants if not (data / "voices" / "!v" / v).is_file()]
        if missing or not self.variants:
            raise SetupError(f"synthetic voices: espeak-ng has no variant {missing or variants} in {data}")
        self._lines = {v: variant_lines(data / "voices" / "!v" / v) for v in self.variants}
        self._tmp: Path | None = None

    @property
    def path(self) -> Path:
        """The folder to give espeak-ng as ``--path``."""
        if self._tmp is None:
            raise RuntimeError("VoiceBank is used inside a with block")
        return self._tmp

    def __enter__(self) -> VoiceBank:
        self._tmp = Path(tempfile.mkdtemp(prefix="fa-edge-voices-"))
        mirror = self._tmp / "espeak-ng-data"
        (mirror / "voices" / "!v").mkdir(parents=True)
        for entry in self.data.iterdir():  # everything but voices/ is shared as is
            if entry.name != "voices":
                (mirror / entry.name).symlink_to(entry)
        for entry in (self.data / "voices").iterdir():
            if entry.name != "!v":
                (mirror / "voices" / entry.name).symlink_to(entry)
        return self

    def __exit__(self, *exc) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def draw(self, rng: random.Random) -> tuple[str, SyntheticVoice]:
        """Write a new synthetic variant into the bank; returns its name (for ``accent+name``) and description."""
        voice = SyntheticVoice(
            rng.choice(self.variants), rng.choice(self.variants), rng.uniform(*TRACT), rng.uniform(*STRENGTH),
            rng.uniform(*WIDTH), rng.uniform(*PITCH),
        )  # fmt: skip
        text = synthetic_variant(self._lines[voice.base], self._lines[voice.quality], voice, rng)
        (self.path / "espeak-ng-data" / "voices" / "!v" / VARIANT).write_text(text, encoding="latin-1")
        return VARIANT, voice

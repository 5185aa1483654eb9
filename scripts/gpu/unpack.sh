#!/usr/bin/env bash
# A GPU run's files (scripts/gpu/device.sh train, under the device tool's files_at) made into a run folder here,
# and stacked onto the shipped weights as train_tiny.sh ships a run:
#   bash scripts/gpu/unpack.sh FILES_DIR work/run-gpu-joint   -> RUN/state.pt, RUN/char_head.npz, RUN/shipped.safetensors
# train/ship.py refuses unless the run's base checkpoint (the demo checkpoint at the same path) holds here the
# weights the run trained from, by sha256.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-.venv/bin}
FROM=${1:?the files the device call returned}
RUN=${2:?a new run folder}
mkdir "$RUN"  # a new folder: an earlier run's is never overwritten
cat "$FROM"/state.pt.part* >"$RUN/state.pt"
for f in train.log.gz gpu-joint.yaml base.txt; do [ ! -f "$FROM/$f" ] || cp "$FROM/$f" "$RUN/"; done
"$BIN/python" scripts/gpu/finish.py char-head "$RUN"
"$BIN/python" -m falcon_audio_edge.train.ship "$RUN" --onto falcon_audio_edge/data/shipped/trainable.safetensors \
  -o "$RUN/shipped.safetensors"

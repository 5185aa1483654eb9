#!/usr/bin/env bash
# A training run on a lent GPU machine (the device tool: no network, no espeak-ng, flite or Whisper package, and at
# most 64 MiB carried per call), in three calls made one after the other while the machine stays warm. Each call
# runs from the repository root there; scripts/gpu/pack.sh makes what the calls carry (.gpu/c1, c2, c3).
#
#   bash scripts/gpu/device.sh setup        # call 1 (carry .gpu/c1): shipped weights kept, engines, wheels,
#                                           #   checks; the training clips start speaking in the background
#   bash scripts/gpu/device.sh part         # call 2 (carry .gpu/c2; shipped weights left out of the tree): GGUF 1/2
#   bash scripts/gpu/device.sh train SECS   # call 3 (carry .gpu/c3): GGUF 2/2, the demo checkpoint built again
#                                           #   (scripts/gpu/build_base.py), then training until SECS have passed
#
# What comes back under $OUT: the run's last saved state without its optimizer (state.pt.part*, cat them), its
# log, and the base checkpoint's sha256 (it must equal the one this machine's `fa-edge demo` builds, or the run
# cannot be shipped: train/ship.py checks it). scripts/gpu/unpack.sh puts the run together here.
set -euo pipefail
S=${FA_GPU_STAGE:-/root/fa-stage}             # everything the calls leave on the machine
HOME_DEMO=${FA_GPU_HOME:-}  # the demo home: the same path as here (pack.sh writes it in .gpu/c3/home.txt)
PY=${FA_GPU_PYTHON:-python3}
export PATH=$S/bin:$PATH PYTHONPATH=$S/site${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
OUT=${OUT:-$S/out}
mkdir -p "$S" "$OUT"

engines() {  # espeak-ng and flite with their own libraries (LD_LIBRARY_PATH for them alone, not for Python)
  tar -C "$S" -xJf .gpu/c1/fatools.tar.xz
  local data=/usr/lib/x86_64-linux-gnu/espeak-ng-data  # the path compiled into espeak-ng
  [ -e "$data" ] || { mkdir -p "$(dirname $data)"; cp -r "$S/fatools/espeak-ng-data" "$data"; }
  mkdir -p "$S/bin"
  for b in espeak-ng flite; do
    printf '#!/bin/sh\nLD_LIBRARY_PATH=%s/fatools/lib exec %s/fatools/bin/%s "$@"\n' "$S" "$S" "$b" >"$S/bin/$b"
    chmod +x "$S/bin/$b"
  done
}

speak_all() {  # the training clips: fresh voices for the training sentences and the random-word rows
  local M=$S/manifests R=$S/data
  mkdir -p "$R"
  local jobs=(
    "train-a 1101 $M/train-a.jsonl" "train-b 1102 $M/train-b.jsonl"
    "acc1-a 1103 $M/train-a.jsonl --accents 0.8" "acc1-b 1104 $M/train-b.jsonl --accents 0.8"
    "acc2-a 1113 $M/train-a.jsonl --accents 0.8" "acc2-b 1114 $M/train-b.jsonl --accents 0.8"
    "flite-a 1105 $M/train-a.jsonl --flite 1" "flite-b 1106 $M/train-b.jsonl --flite 1"
    "words-a 1107 $M/words-a.jsonl" "words-b 1108 $M/words-b.jsonl"
    "wacc-a 1109 $M/words-a.jsonl --accents 0.8" "wacc-b 1110 $M/words-b.jsonl --accents 0.8"
  )
  local pids=()
  for job in "${jobs[@]}"; do
    set -- $job
    local name=$1 seed=$2 manifest=$3; shift 3
    $PY -m falcon_audio_edge.cli respeak "$manifest" -o "$R/$name" --seed "$seed" "$@" >"$S/speak-$name.log" 2>&1 &
    pids+=($!)
  done
  local failed=0
  for p in "${pids[@]}"; do wait "$p" || failed=$((failed + 1)); done
  echo "$failed" >"$S/speak.done"
}

setup() {
  cp falcon_audio_edge/data/shipped/trainable.safetensors falcon_audio_edge/data/shipped/char_head.npz "$S/"
  if [ -z "${FA_GPU_REHEARSAL:-}" ]; then  # a rehearsal here keeps this machine's environment as it is
    $PY -m pip install -q --no-index --no-deps --no-compile --target "$S/site" .gpu/c1/*.whl
    # installed from a copy, and run from it: the next calls replace the tree while the clips are being spoken
    rm -rf "$S/repo" && mkdir -p "$S/repo" && tar --exclude=./.gpu --exclude=./.git --exclude=./work -cf - . | tar -C "$S/repo" -xf -
    $PY -m pip install -q --no-deps --no-build-isolation -e "$S/repo" >/dev/null
  fi
  local repo=$PWD
  [ -n "${FA_GPU_REHEARSAL:-}" ] || repo=$S/repo
  engines
  tar -C "$S" -xzf .gpu/c1/manifests.tar.gz
  if [ -n "${FA_GPU_REHEARSAL:-}" ]; then  # a few rows each
    for f in "$S"/manifests/*.jsonl; do head -n 6 "$f" >"$f.tmp" && mv "$f.tmp" "$f"; done
  fi
  espeak-ng --version && flite -lv
  $PY - <<'PY'
import torch, transformers, accelerate, peft
import falcon_audio_edge.train.trainer, falcon_audio_edge.train.grow  # noqa: F401
print("torch", torch.__version__, "transformers", transformers.__version__, "accelerate", accelerate.__version__,
      "peft", peft.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA")
PY
  head -3 "$S/manifests/train-a.jsonl" >"$S/smoke.jsonl"
  rm -rf "$S/smoke" && $PY -m falcon_audio_edge.cli respeak "$S/smoke.jsonl" -o "$S/smoke" --seed 1 --accents 1 --flite 0.5
  nproc
  rm -rf "$S/data" "$S/speak.done"  # a second setup speaks everything again
  (cd "$repo" && setsid nohup bash scripts/gpu/device.sh speak </dev/null >"$S/speak.log" 2>&1 &)
  echo "speaking in the background"
}

part() {
  cp .gpu/c2/* "$S/"
  echo "clips so far: $(find "$S/data" -name '*.wav' 2>/dev/null | wc -l)"
}

config() {  # the run: stage 10's rates and heads, the LM loss from the first step (on a GPU it costs little),
  # a cosine over 4000 steps that the time limit may cut short (its last save, every 100 steps, comes back)
  local sets=() name
  for name in train-a train-b acc1-a acc1-b acc2-a acc2-b flite-a flite-b words-a words-b wacc-a wacc-b; do
    if [ -f "$S/data/$name/manifest.jsonl" ]; then sets+=("$S/data/$name/manifest.jsonl"); fi  # whole or not at all
  done
  echo "training sets: ${#sets[@]} of 12"
  cat >"$S/gpu-joint.yaml" <<YAML
checkpoint: $HOME_DEMO/checkpoint
train_manifest: [$(IFS=,; echo "${sets[*]}")]
eval_manifest: $S/eval/manifest.jsonl
output_dir: $S/run
train: [connector, encoder]
learning_rate: 0.0001
encoder_learning_rate: 0.00005
warmup_steps: 50
max_steps: ${FA_GPU_STEPS:-4000}
ctc_weight: 0.5
ctc_learning_rate: 0.0005
char_weight: 1.0
char_learning_rate: 0.0003
ctc_only_steps: 0
batch_size: 8
bf16: auto
eval_every: 500
save_every: ${FA_GPU_SAVE:-100}
max_eval_examples: 48
seed: 111
YAML
  cp "$S/gpu-joint.yaml" "$OUT/"
}

train() {
  local limit=$1 start=$SECONDS
  cp .gpu/c3/*.part* .gpu/c3/*.sha256 .gpu/c3/home.txt "$S/"
  HOME_DEMO=${HOME_DEMO:-$(cat "$S/home.txt")}
  tar -C "$S" -xzf .gpu/c3/eval.tar.gz
  cat "$S"/gguf.part* >"$S/smollm2.gguf"
  (cd "$S" && sha256sum -c gguf.sha256)
  $PY scripts/gpu/build_base.py "$HOME_DEMO" --llm "$S/smollm2.gguf" --weights "$S/trainable.safetensors" \
    --char-head "$S/char_head.npz" 2>&1 | tail -1 | tee "$OUT/base.txt"
  if ! (cd "$HOME_DEMO/checkpoint" && sha256sum -c "$S/base.sha256"); then
    echo "the checkpoint built here differs from the one pack.sh built: a run on it could not be shipped" >&2
    exit 1
  fi
  while [ ! -f "$S/speak.done" ] && [ $((SECONDS - start)) -lt $((limit / 3)) ]; do sleep 2; done
  echo "speaking failed in $(cat "$S/speak.done" 2>/dev/null || echo 'unfinished') jobs; clips: $(find "$S/data" -name '*.wav' | wc -l)"
  config
  local left=$((limit - (SECONDS - start) - 40))  # 40 s to pack and send back
  echo "training for at most $left s"
  rm -rf "$S/run"  # a second call trains anew, never on from the last call's state
  local rc=0
  (cd "$S/repo" 2>/dev/null || true; timeout -s KILL "$left" $PY -m falcon_audio_edge.train "$S/gpu-joint.yaml") \
    >"$S/train.log" 2>&1 || rc=$?
  tr '\r' '\n' <"$S/train.log" | grep -v '^ *$' | gzip >"$OUT/train.log.gz"
  tail -c 3000 "$S/train.log" | tr '\r' '\n' | tail -n 25
  if [ "$rc" != 0 ] && [ "$rc" != 137 ]; then  # 137: stopped by the time limit, its last save is the result
    echo "training failed (exit status $rc)" >&2
    exit 1
  fi
  $PY scripts/gpu/finish.py strip "$S/run" "$OUT"
}

case "${1:-}" in
  setup) setup ;;
  speak) speak_all ;;
  part) part ;;
  train) train "${2:?seconds}" ;;
  *) echo "usage: $0 setup | part | train SECONDS" >&2; exit 2 ;;
esac

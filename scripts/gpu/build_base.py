"""Build the demo checkpoint where the Whisper package is not installed (a lent GPU machine, scripts/gpu/).

    python scripts/gpu/build_base.py OUT_HOME --llm SmolLM2-135M-Instruct.Q4_1.gguf --weights trainable.safetensors \
        --char-head char_head.npz

The shipped weights hold every tensor of the fine-tuned encoder, so Whisper tiny.en's own file adds nothing to the
checkpoint: the encoder is made at its preset size (whisper-tiny, as the shipped dims say) and every one of its
tensors is then replaced from the shipped file (apply_trained checks each key and shape). What comes out is
OUT_HOME/checkpoint, the same bytes as `fa-edge demo`'s (pack.sh compares them, device.sh checks the sha256), and
OUT_HOME/sources.json with the shipped files' sha256 (train.ship reads it; the package files' entries are left out).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from safetensors import safe_open

from falcon_audio_edge.demo import build_checkpoint
from falcon_audio_edge.files import atomic_text
from falcon_audio_edge.runtime.bundle import sha256_file


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("home", type=Path)
    ap.add_argument("--llm", type=Path, required=True)
    ap.add_argument("--weights", type=Path, required=True)
    ap.add_argument("--char-head", type=Path, required=True)
    args = ap.parse_args()
    if not any(k.startswith("encoder.") for k in safe_open(args.weights, "pt").keys()):
        raise SystemExit(f"{args.weights} holds no encoder: the checkpoint would keep a random one")
    # the dims checked, the encoder's every tensor replaced from the weights (apply_trained)
    saved = build_checkpoint(args.home / "checkpoint", args.weights, "whisper-tiny", args.llm, args.char_head)
    sources = {"shipped_sha256": sha256_file(args.weights), "char_head_sha256": sha256_file(args.char_head)}
    atomic_text(args.home / "sources.json", json.dumps(sources, indent=1) + "\n")
    print(f"{saved}: model.safetensors sha256 {sha256_file(saved / 'model.safetensors')}")


if __name__ == "__main__":
    main()

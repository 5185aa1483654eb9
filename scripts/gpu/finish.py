"""A GPU run's last save brought back and made shippable (scripts/gpu/device.sh, unpack.sh).

    python scripts/gpu/finish.py strip RUN_DIR OUT        # there: the state without its optimizer, in parts
    python scripts/gpu/finish.py char-head RUN_DIR        # here: RUN_DIR/char_head.npz from that state

``strip`` keeps the step, the config and the trained weights (what train/ship.py and ``init_from`` read) and
drops the optimizer and schedule (twice the weights' size; a resume here would start them anew), then writes
the file in parts of at most 15 MiB (the device tool returns files of 16 MiB at most): OUT/state.pt.part00, ...
``char-head`` writes the character head a finished run leaves beside its weights (the trainer writes it only at
its last step, and a run cut off by its time limit never gets there), from the state's ``chars.*`` weights and
the base checkpoint's head of the same shape.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import torch
from falcon_audio_edge.train.charnet import start_head, to_char_head
from falcon_audio_edge.train.state import STATE_FILE, read_state

from falcon_audio_edge.checkpoint import read_dims
from falcon_audio_edge.errors import ConfigError
from falcon_audio_edge.files import atomic_file
from falcon_audio_edge.runtime.charnet import CHAR_HEAD_FILE

PART = 15 * 2**20


def strip(run: Path, out: Path) -> None:
    state = read_state(run / STATE_FILE)
    state["optimizer"] = state["scheduler"] = None
    for old in out.glob(f"{STATE_FILE}.part*"):  # an earlier call's parts would be joined with these
        old.unlink()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    for i in range(0, len(data), PART):
        (out / f"{STATE_FILE}.part{i // PART:02d}").write_bytes(data[i : i + PART])
    tensors = len(state["trainable"])
    print(f"{run}: step {state['step']}, {tensors} trained tensors, {len(data)} bytes without the optimizer")


def char_head(run: Path) -> None:
    state = read_state(run / STATE_FILE)
    base = Path(state["config"]["checkpoint"])
    head = start_head(base / CHAR_HEAD_FILE, read_dims(base).decoder.hidden)
    weights = {k[len("chars.") :]: v for k, v in state["trainable"].items() if k.startswith("chars.")}
    if not weights:
        raise ConfigError(f"{run / STATE_FILE} holds no character head (chars.*)")
    head.load_state_dict(weights, strict=True)  # every key and shape
    atomic_file(run / CHAR_HEAD_FILE, to_char_head(head.float().eval()).save)
    print(f"{run / CHAR_HEAD_FILE}: from step {state['step']}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "strip":
        strip(Path(sys.argv[2]), Path(sys.argv[3]))
    elif len(sys.argv) == 3 and sys.argv[1] == "char-head":
        char_head(Path(sys.argv[2]))
    else:
        sys.exit("usage: finish.py strip RUN_DIR OUT | char-head RUN_DIR")

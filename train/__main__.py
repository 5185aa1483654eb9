"""``python -m falcon_audio_edge.train config.yaml`` (also under ``accelerate launch``)."""

from __future__ import annotations

import sys

from falcon_audio_edge.errors import FaEdgeError


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print("usage: python -m falcon_audio_edge.train CONFIG.yaml", file=sys.stderr)
        return 2
    from falcon_audio_edge.train.config import TrainConfig
    from falcon_audio_edge.train.trainer import train

    try:
        result = train(TrainConfig.load(argv[0]))
    except FaEdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

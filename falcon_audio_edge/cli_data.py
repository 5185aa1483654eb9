"""The training command of ``fa-edge``: ``train`` (registered on the app by ``register``; it imports the
recipe only when run)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def train_cmd(config: Annotated[Path, typer.Argument(help="training config (YAML)")]) -> None:
    """Train with the one-stage recipe (runs unchanged under `accelerate launch`)."""
    from falcon_audio_edge.train.config import TrainConfig
    from falcon_audio_edge.train.trainer import train

    result = train(TrainConfig.load(config))
    typer.echo(result.summary())


def register(app: typer.Typer) -> None:
    app.command(name="train")(train_cmd)

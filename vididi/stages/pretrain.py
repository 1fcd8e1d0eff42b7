"""`vididi pretrain`: pretrain one run, resuming from its last checkpoint (ssl/trainer.py).

Under torchrun every process runs this stage; rank 0 writes the outputs.
"""

from __future__ import annotations

from pathlib import Path

from .. import config as cfgmod
from ..ssl.trainer import pretrain


def main(config: dict, run: cfgmod.Run) -> Path:
    """Train `run`; returns `layout.final_checkpoint`."""
    return pretrain(config, run)

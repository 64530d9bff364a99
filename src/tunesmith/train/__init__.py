"""Training: the loop (loop.py), its kernels and loss (loss.py), checkpoints and exact resume
(checkpoints.py).

    tunesmith train config.yaml [section.key=value ...] [--resume]
    from tunesmith.train import train; run_dir = train(cfg)
"""

from tunesmith.train.checkpoints import latest_checkpoint
from tunesmith.train.loop import cli_train, heldout_loss, train

__all__ = ["cli_train", "heldout_loss", "latest_checkpoint", "train"]

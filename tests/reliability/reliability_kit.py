"""Shared pieces of the reliability suite: chat data, a tiny-model training config, a forked trainer.
(A module of its own, not conftest.py: tests/ has a conftest too, and `from conftest import` would
depend on which of the two was imported last.)

Training children are forked from the test process (torch, transformers and the tiny model already
loaded), so a life of a run costs a fraction of a second instead of a fresh interpreter's imports;
that is what lets the kill storm's fast variant kill ten runs inside `make test`.
"""

import os
import sys
import traceback

from tunesmith.testing import make_chats  # noqa: F401 (the suite's chat data, re-exported for its tests)


def train_overrides(model_dir, data, steps, *extra):
    """A run of `steps` tiny steps that checkpoints every step (so a kill often lands in a save); lora
    dropout makes the restored RNG state matter, eval and example logs make the data position matter."""
    return [
        f"model.name={model_dir}",
        f"data.train={data}",
        f"train.max_steps={steps}",
        "train.batch_size=2",
        "train.save_every=1",
        "train.keep_last=2",
        "lora.r=4",
        "lora.dropout=0.1",
        "train.lr=1e-2",
        "train.log_examples=true",
        "train.eval_every=5",
        "data.heldout_fraction=0.1",
        "train.threads=1",
        *extra,
    ]


def fork_train(overrides, resume: bool, log_path) -> int:
    """Start `train` in a forked child (stdout and stderr to log_path); return its pid."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:  # the child never returns into pytest
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stdout = os.fdopen(1, "w", buffering=1)
        sys.stderr = os.fdopen(2, "w", buffering=1)
        os.environ["TQDM_DISABLE"] = "1"
        from tunesmith.config import load_config
        from tunesmith.train import train

        train(load_config(None, overrides), resume=resume)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

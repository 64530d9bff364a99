"""tunesmith: fine-tune a language model on your organisation's own material, and prove it pays."""

import os

# Nothing in tunesmith downloads at run time. These switches make transformers and huggingface_hub
# fail at once on a missing file instead of trying the network (and hanging on a closed one).
# Set before transformers is imported anywhere in the package.
for _switch in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_switch, "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# An OpenMP thread that finishes its share of an op spins a little (10,000 turns, some microseconds)
# before it sleeps: decoding and training run thousands of small ops back to back, and threads that
# sleep between them wait to be woken for each one; threads that spin on and on starve each other
# when other processes share the cores (docs/train.md, "CPU settings"). torch's OpenMP runtime
# (libgomp) reads this once, when torch loads; a user's own OMP_WAIT_POLICY or GOMP_SPINCOUNT wins.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")

__version__ = "0.1.0"


class UserError(Exception):
    """An error the user can fix: the CLI prints its message, without a traceback, and exits 2."""

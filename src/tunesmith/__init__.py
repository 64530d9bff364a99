"""tunesmith: fine-tune a language model on your organisation's own material, and prove it pays."""

import os

# Whether the network may be used is the user's to say (HF_HUB_OFFLINE, or the CLI's --offline):
# a hub model downloads on first use (tunesmith.hub); importing the package switches nothing.
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

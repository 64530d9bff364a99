"""Shared fixtures: the embedded tokenizer and tiny random models built from it.

The embedded model is converted once per machine (about 30 s, cached under ~/.cache/tunesmith);
everything else here takes well under a second.
"""

import pytest


@pytest.fixture(scope="session")
def tokenizer():
    from tunesmith.models import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """An HF directory: random Llama, 2 layers, hidden 64, the embedded tokenizer and chat template."""
    from tunesmith.testing import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", tokenizer=tokenizer)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from tunesmith.models import load

    return load(str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: tiny models are fastest so on a shared CPU (spare threads spin against other
    processes), and results in and out of process stay bitwise comparable."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

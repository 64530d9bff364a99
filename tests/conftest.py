"""Shared fixtures: the embedded tokenizer and tiny random models built from it.

The embedded model is converted once per machine (about 30 s, cached under ~/.cache/tunesmith);
everything else here takes well under a second.
"""

import os

import pytest

# No test may reach the internet: one that asks the hub by mistake fails at once on a closed local
# port. The hub tests point HF_ENDPOINT at their own server (tests/hub_server.py).
os.environ.setdefault("HF_ENDPOINT", "http://127.0.0.1:9")

# Under pytest-xdist (`make test` runs `-n auto`) each worker gets its share of the cores before torch
# starts: a pool on every core in every worker makes each op wait for threads that share a core
# (docs/train.md). Subprocesses the tests start inherit it.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))


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


def _assert_same_run(run, reference, steps: int) -> float:
    """A resumed run ended exactly where the uninterrupted one did: final weights within 1e-6, the
    same example order (no repeats, no gaps), the same losses, every step logged once."""
    import json

    from safetensors.torch import load_file

    final, ref = (load_file(r / "final" / "adapter_model.safetensors") for r in (run, reference))
    assert final.keys() == ref.keys()
    diff = max((final[k] - ref[k]).abs().max().item() for k in ref)
    assert diff <= 1e-6, diff
    assert (run / "examples.jsonl").read_text() == (reference / "examples.jsonl").read_text()
    logged = lambda r: [json.loads(x) for x in (r / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert [x["loss"] for x in logged(run)] == pytest.approx([x["loss"] for x in logged(reference)], abs=1e-6)
    assert [x["step"] for x in logged(run)] == list(range(1, steps + 1))
    return diff


@pytest.fixture
def assert_same_run():
    return _assert_same_run

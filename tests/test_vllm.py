"""generate.engine: which engine runs where, and vLLM itself where a GPU and vllm are present."""

import importlib.util

import pytest

from tunesmith import UserError
from tunesmith.generation.stopping import guard_cut
from tunesmith.generation.vllm import choose


def test_auto_picks_vllm_only_with_cuda_and_the_package():
    assert choose("auto", cuda=True, installed=True) == "vllm"
    assert choose("auto", cuda=True, installed=False) == "tunesmith"
    assert choose("auto", cuda=False, installed=True) == "tunesmith"
    assert choose("tunesmith", cuda=True, installed=True) == "tunesmith"
    assert choose("vllm", cuda=True, installed=True) == "vllm"


@pytest.mark.parametrize(
    "cuda,installed,needle", [(False, True, "needs a CUDA GPU"), (True, False, "pip install vllm")]
)
def test_asking_for_vllm_where_it_cannot_run_says_why(cuda, installed, needle):
    with pytest.raises(UserError, match=needle):
        choose("vllm", cuda=cuda, installed=installed)
    with pytest.raises(UserError, match="one of auto, tunesmith, vllm"):
        choose("vlm", cuda=cuda, installed=installed)


def test_guard_cut_is_where_the_engine_would_have_stopped():
    from tunesmith.generation.stopping import repeat_start

    NL = 10
    line = [1, 2, 3, 4, 5, NL]
    ids = line + [7, NL] + line + [8, 9, 11]  # the second copy of `line` ends at token 14
    assert guard_cut(ids, {NL}) == 14 and repeat_start(ids[:14], {NL}) == 8
    assert guard_cut(line + [7, NL], {NL}) is None


gpu = pytest.mark.skipif(
    not (
        importlib.util.find_spec("vllm")
        and importlib.util.find_spec("torch")
        and __import__("torch").cuda.is_available()
    ),
    reason="needs CUDA and vllm",
)


@pytest.mark.gpu
@gpu
def test_vllm_replies_equal_the_engines_for_base_and_adapter(tmp_path, tiny_model_dir, tokenizer):
    """Greedy, fp32: vLLM's replies equal the tunesmith engine's, on the base model and on a LoRA run."""
    from tunesmith.generation import vllm as vllm_engine
    from tunesmith.generation.api import generate
    from tunesmith.models import load
    from tunesmith.testing import make_tiny_lora_run

    convs = [[{"role": "user", "content": q}] for q in ("hi", "What is a cook night?", "Name three staples.")]
    run = make_tiny_lora_run(tmp_path / "run", tiny_model_dir, tokenizer)
    for spec in (str(tiny_model_dir), str(run)):
        vm, tok = vllm_engine.load(spec, dtype="float32")
        got = generate(vm, tok, convs, max_new_tokens=8, stop_on_repeat=False)
        del vm
        model, tok = load(spec, device="cuda", dtype="float32", merge_adapter=True)
        want = generate(model, tok, convs, max_new_tokens=8, stop_on_repeat=False)
        assert [g.text for g in got] == [w.text for w in want]
        assert [g.completion_tokens for g in got] == [w.completion_tokens for w in want]

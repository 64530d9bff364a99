"""Every model family tunesmith claims, as a tiny random model of that family: the loss equals
transformers' own, packed examples see exactly what they see alone, LoRA and full training lower
the loss, generation equals transformers' generate, and the exports reload equal.

Windows are 8 tokens and every example longer than 16, so a sliding window changes every example; Gemma 2's
caps and Granite's and Cohere's logit scales are set where they change a random model's logits
(each test checks that the feature it exercises does change the result)."""

import json

import pytest
import torch

from tunesmith import UserError
from tunesmith.data.batches import IGNORE, collate, encode
from tunesmith.testing import FAMILIES, WINDOW, make_sentencepiece_tokenizer, make_tiny_lora_run, make_tiny_model
from tunesmith.train.loss import CausalLMLoss, use_varlen

# what each family's distinguishing setting is turned into to show the test depends on it
NEUTRAL = {
    "sliding_window": 4096,
    "final_logit_softcapping": None,
    "attn_logit_softcapping": None,
    "logit_scale": 1.0,
    "logits_scaling": 1.0,
}
# Gemma and Phi-3 ship a sentencepiece model, which llama.cpp's converter reads their vocabulary from
SENTENCEPIECE = {"phi3": "LlamaTokenizer", "gemma2": "GemmaTokenizer"}
# family -> what the GGUF export says where it does not convert (families not here convert and verify)
GGUF_REFUSED = {
    # llama.cpp keeps no window for Mistral: its GGUF differs from the model past the window
    "mistral-window": r"no sliding window: llama.cpp's 'llama' attends over the whole context",
    # transformers' GGUF reader rebuilds Gemma 2 with the default caps (50, 30), not the file's
    "gemma2": r"attn_logit_softcapping 50.0 \(the model: 0.5\), final_logit_softcapping 30.0 \(the model: 0.5\)",
    # the converter recognises a tokenizer by hashing its output; the tiny Qwen 2 borrows SmolLM2's,
    # which it knows only under Llama
    "qwen2": r"(?s)^qwen2: llama.cpp's converter could not convert .*pre-tokenizer was not recognized",
    # transformers has no reader for these GGUF architectures, so the file could not be verified
    "olmo2": r"^olmo2: .*'olmo2' GGUF files, which transformers cannot read",
    "granite": r"^granite: .*'granite' GGUF files, which transformers cannot read",
    "smollm3": r"^smollm3: .*'smollm3' GGUF files, which transformers cannot read",
    "cohere2": r"^cohere2: .*'cohere2' GGUF files, which transformers cannot read",
}

CHATS = [
    [
        {"role": "user", "content": "What did participants say about planning weeknight meals?"},
        {"role": "assistant", "content": "They plan two or three cook nights and improvise the rest of the week."},
    ],
    [{"role": "user", "content": "Swap?"}, {"role": "assistant", "content": "A cheaper item in place of one."}],
    [
        {"role": "system", "content": "Answer in the house style."},
        {"role": "user", "content": "Name one pantry habit."},
        {"role": "assistant", "content": "Buying staples in bulk."},
    ],
]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def family_dir(tmp_path_factory, tokenizer):
    """family -> the directory of its tiny random model, built once on first use."""
    built = {}

    def get(family):
        if family not in built:
            tmp = tmp_path_factory.mktemp(family)
            tok = (
                make_sentencepiece_tokenizer(tmp / "tokenizer", SENTENCEPIECE[family])
                if family in SENTENCEPIECE
                else tokenizer
            )
            built[family] = make_tiny_model(tmp / "model", tokenizer=tok, family=family)
        return built[family]

    return get


@pytest.fixture(scope="module")
def family_tok(family_dir):
    """family -> its tiny model's tokenizer, as tunesmith loads it."""
    from tunesmith.models import load_tokenizer

    loaded = {}

    def get(family):
        if family not in loaded:
            loaded[family] = load_tokenizer(str(family_dir(family)))
        return loaded[family]

    return get


def load(model_dir, **overrides):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **overrides).eval()


def encoded(tokenizer):
    out = []
    for i, chat in enumerate(CHATS):
        ids, targets = encode(tokenizer, chat)
        out.append({"ids": ids, "targets": targets, "index": i})
    assert min(len(e["ids"]) for e in out) > 2 * WINDOW  # the window cuts into every example
    return out


def transformers_loss_sum(model, examples):
    """Sum of token losses as transformers computes them, one unpadded example at a time."""
    total = 0.0
    for e in examples:
        labels = [t if keep else IGNORE for t, keep in zip(e["ids"], e["targets"])]
        n = sum(1 for x in labels[1:] if x != IGNORE)
        with torch.no_grad():
            total += model(input_ids=torch.tensor([e["ids"]]), labels=torch.tensor([labels])).loss.item() * n
    return total


def neutral(family):
    return {k: NEUTRAL[k] for k, v in FAMILIES[family][2].items() if k in NEUTRAL and v is not None}


@pytest.mark.parametrize("family", FAMILIES)
def test_loss_equals_transformers_own_loss_packed_and_padded(family, family_dir, family_tok):
    tokenizer = family_tok(family)
    examples = encoded(tokenizer)
    ref = transformers_loss_sum(load(family_dir(family)), examples)
    padded = load(family_dir(family))
    with torch.no_grad():
        ours_padded = CausalLMLoss(padded)(**collate(examples, packing=False, pad_id=tokenizer.pad_token_id)).item()
    packed = load(family_dir(family))
    use_varlen(packed)
    with torch.no_grad():
        ours_packed = CausalLMLoss(packed)(**collate(examples, packing=True)).item()
    n = sum(sum(e["targets"][1:]) for e in examples)
    assert abs(ours_padded - ref) / n < 1e-5 and abs(ours_packed - ref) / n < 1e-5, (ours_padded, ours_packed, ref)
    if neutral(family):  # the family's own setting matters: without it the loss is another one
        assert abs(transformers_loss_sum(load(family_dir(family), **neutral(family)), examples) - ref) / n > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_logits_equal_each_example_alone(family, family_dir, family_tok):
    examples = encoded(family_tok(family))
    batch = collate(examples, packing=True)
    model = load(family_dir(family))
    use_varlen(model)
    alone_model = load(family_dir(family))  # the family's own attention (sdpa, or eager for Gemma 2)
    other = load(family_dir(family), **neutral(family)) if neutral(family) else None
    with torch.no_grad():
        packed = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], cu_seqlens=batch["cu_seqlens"]
        ).logits[0]  # (sum of lengths, V)
        for e, start in zip(examples, batch["cu_seqlens"]):
            alone = alone_model(input_ids=torch.tensor([e["ids"]])).logits[0]
            assert (packed[start : start + len(e["ids"])] - alone).abs().max().item() < 1e-5
            if other is not None:
                assert (other(input_ids=torch.tensor([e["ids"]])).logits[0] - alone).abs().max().item() > 1e-3


def test_windows_and_caps_are_each_layers_own(family_dir, family_tok):
    """Gemma 2: the local layer gets the window, the global one none; both get the attention cap."""
    import tunesmith.train.loss as loss_mod

    seen = []
    real = loss_mod.varlen_attention

    def spy(module, *args, **kwargs):
        seen.append((module.layer_idx, kwargs.get("sliding_window"), kwargs.get("softcap")))
        return real(module, *args, **kwargs)

    model = load(family_dir("gemma2"))
    use_varlen(model)
    from transformers import AttentionInterface

    AttentionInterface.register(loss_mod.VARLEN, spy)
    try:
        with torch.no_grad():
            CausalLMLoss(model)(**collate(encoded(family_tok("gemma2")), packing=True))
    finally:
        AttentionInterface.register(loss_mod.VARLEN, real)
    assert seen == [(0, WINDOW, 0.5), (1, None, 0.5)]


def reference_attention(q, k, v, scale, window, softcap):
    """Attention with an explicit (L, L) mask, every score written out: q (B, H, L, D), k/v (B, Hkv, L, D)."""
    k, v = (x.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for x in (k, v))
    scores = q @ k.transpose(2, 3) * scale
    if softcap:
        scores = softcap * torch.tanh(scores / softcap)
    i = torch.arange(q.shape[2])
    allowed = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < (window or q.shape[2]))
    return torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1) @ v


@pytest.mark.parametrize("window,softcap", [(None, None), (5, None), (None, 0.7), (5, 0.7), (40, None)])
def test_varlen_attention_equals_a_written_out_mask_in_value_and_gradient(window, softcap):
    from tunesmith.train.loss import varlen_attention

    torch.manual_seed(0)
    lengths = [3, 12, 9]  # shorter than, longer than and about the window
    q = torch.randn(1, 4, sum(lengths), 8, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(1, 2, sum(lengths), 8, dtype=torch.float64, requires_grad=True) for _ in range(2))
    cu = [0, 3, 15, 24]
    ours, _ = varlen_attention(None, q, k, v, None, scaling=0.3, cu_seqlens=cu, sliding_window=window, softcap=softcap)
    ours.square().sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    ref = torch.cat(
        [
            reference_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], 0.3, window, softcap)
            for a, b in zip(cu[:-1], cu[1:])
        ],
        dim=2,
    ).transpose(1, 2)  # (1, T, H, D)
    ref.square().sum().backward()
    assert (ours - ref).abs().max().item() < 1e-12
    assert all((g - t.grad).abs().max().item() < 1e-12 for g, t in zip(grads, (q, k, v)))
    if window == 5 or softcap:  # the setting changed the result: the comparison above tested it
        plain = torch.cat(
            [
                reference_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], 0.3, None, None)
                for a, b in zip(cu[:-1], cu[1:])
            ],
            dim=2,
        ).transpose(1, 2)
        assert (plain - ref).abs().max().item() > 1e-3


@pytest.mark.parametrize("window,softcap", [(None, None), (4, None), (None, 0.7)])
def test_a_shared_prefix_is_attended_as_if_it_stood_before_the_example(window, softcap):
    """Packed preference pairs: the second example of each pair also sees the first n tokens of the
    one before it (its prompt, computed once). Its output must equal attention over the sequence
    written out whole, prefix and all, in value and gradient, gradients reaching the prefix's keys."""
    from tunesmith.train.loss import varlen_attention

    torch.manual_seed(0)
    cu, shared = [0, 10, 16, 23, 27], (0, 6, 0, 2)  # pairs (10 tokens, then 6 reading 6 of them), (7, then 4 reading 2)
    q = torch.randn(1, 4, 27, 8, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(1, 2, 27, 8, dtype=torch.float64, requires_grad=True) for _ in range(2))
    ours, _ = varlen_attention(
        None, q, k, v, None, scaling=0.3, cu_seqlens=cu, shared_prefix=shared, sliding_window=window, softcap=softcap
    )
    ours.square().sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    parts = []
    for i, (a, b) in enumerate(zip(cu[:-1], cu[1:])):
        n, prev = shared[i], cu[i - 1] if i else 0
        whole = [torch.cat([x[:, :, prev : prev + n], x[:, :, a:b]], dim=2) for x in (q, k, v)]
        parts.append(reference_attention(*whole, 0.3, window, softcap)[:, :, n:])  # the example's own queries
    ref = torch.cat(parts, dim=2).transpose(1, 2)
    ref.square().sum().backward()
    assert (ours - ref).abs().max().item() < 1e-12
    assert all((g - t.grad).abs().max().item() < 1e-12 for g, t in zip(grads, (q, k, v)))
    alone, _ = varlen_attention(None, q, k, v, None, scaling=0.3, cu_seqlens=cu, sliding_window=window, softcap=softcap)
    assert (alone[:, 10:16] - ours[:, 10:16]).abs().max().item() > 1e-3  # the prefix changed what it sees
    assert (alone[:, :10] - ours[:, :10]).abs().max().item() == 0  # and nothing else of the first pair


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("window", [None, 5])
def test_the_fused_cuda_kernel_keeps_windows_like_the_per_example_path(window):
    from tunesmith.train.loss import _cuda_varlen, varlen_attention

    if _cuda_varlen() is None:
        pytest.skip("this torch has no varlen attention")
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, h, 24, 64, device="cuda", dtype=torch.bfloat16) for h in (4, 2, 2))
    fused, _ = varlen_attention(None, q, k, v, None, cu_seqlens=[0, 3, 15, 24], sliding_window=window)
    ref = torch.cat(
        [
            reference_attention(*(x[:, :, a:b].double().cpu() for x in (q, k, v)), 64**-0.5, window, None)
            for a, b in ((0, 3), (3, 15), (15, 24))
        ],
        dim=2,
    ).transpose(1, 2)
    assert (fused.double().cpu() - ref).abs().max().item() < 2e-2


@pytest.mark.parametrize("scale,softcap", [(1.0, 0.8), (4.0, None), (0.25, None)])
def test_linear_cross_entropy_scales_and_caps_as_the_model_does(scale, softcap):
    import torch.nn.functional as F

    from tunesmith.train.loss import linear_cross_entropy

    torch.manual_seed(0)
    h = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(100, 16, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 100, (37,))
    ours = linear_cross_entropy(h, w, y, chunk=5, scale=scale, softcap=softcap)
    ours.backward()
    grads = [t.grad.clone() for t in (h, w)]
    for t in (h, w):
        t.grad = None
    logits = (h @ w.T) * scale
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    ref = F.cross_entropy(logits, y, reduction="sum")
    ref.backward()
    assert abs(ours.item() - ref.item()) < 1e-10
    assert all((g - t.grad).abs().max().item() < 1e-10 for g, t in zip(grads, (h, w)))
    with torch.no_grad():
        assert abs(linear_cross_entropy(h, w, y, chunk=7, scale=scale, softcap=softcap).item() - ref.item()) < 1e-10
        assert abs(linear_cross_entropy(h, w, y).item() - ref.item()) > 1e-3  # the scale or cap mattered


def test_what_is_not_supported_is_refused_before_training_naming_family_and_fix(family_dir):
    from tunesmith.train.loss import logit_transform

    model = load(family_dir("gemma3"))
    model.config.use_bidirectional_attention = True
    with pytest.raises(UserError, match=r"^gemma3_text: bidirectional attention .* fix: set train.packing=false"):
        use_varlen(model)
    model = load(family_dir("mistral-window"))
    type(model)._supports_flash_attn, saved = False, type(model)._supports_flash_attn
    try:
        with pytest.raises(UserError, match=r"^mistral: its sliding window reaches attention only through a mask"):
            use_varlen(model)
    finally:
        type(model)._supports_flash_attn = saved
    config = load(family_dir("granite")).config
    config.output_multiplier = 2.0
    with pytest.raises(UserError, match=r"^granite: its logits are rescaled .*output_multiplier.* fix:"):
        logit_transform(config)
    config.output_multiplier, config.final_logit_softcapping = None, 30.0
    with pytest.raises(UserError, match=r"logits_scaling, final_logit_softcapping"):
        logit_transform(config)


def chats_file(path, n=8):
    words = "pantry basket planner budget swap nudge cook night weekly plan household leftover".split()
    with open(path, "w") as f:
        for i in range(n):
            q = " ".join(words[(i + j) % len(words)] for j in range(6 + 3 * i))
            a = " ".join(words[(2 * i + j) % len(words)] for j in range(4 + 2 * i))
            f.write(
                json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n"
            )
    return path


@pytest.mark.parametrize("method", ["lora", "full"])
@pytest.mark.parametrize("family", FAMILIES)
def test_training_lowers_the_loss(family, method, family_dir, tmp_path):
    from tunesmith.config import load_config
    from tunesmith.train import train

    data = chats_file(tmp_path / "train.jsonl")
    lr = {"lora": 1e-2, "full": 1e-3}[method]
    run = train(
        load_config(
            None,
            [
                f"model.name={family_dir(family)}",
                f"data.train={data}",
                f"train.output_dir={tmp_path / 'run'}",
                f"train.method={method}",
                "train.max_steps=4",
                "train.batch_size=8",
                f"train.lr={lr}",
                "lora.r=4",
                "data.heldout_fraction=0",
                "train.threads=1",
                "train.save_every=-1",
            ],
        )
    )
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and losses[-1] < losses[0] - 0.05, losses  # the same 8 examples every step
    saved = json.loads((run / "final" / ("adapter_config.json" if method == "lora" else "config.json")).read_text())
    assert "tunesmith" not in json.dumps(saved)  # the saved model loads without tunesmith


@pytest.mark.parametrize("family", FAMILIES)
def test_generation_equals_transformers_generate(family, family_dir):
    from tunesmith.generation.api import encode_prompts, generate
    from tunesmith.generation.stopping import stop_ids
    from tunesmith.models import load as ts_load

    model, tok = ts_load(str(family_dir(family)), dtype="float32", device="cpu")
    convs = [c[:-1] for c in CHATS]
    ours = generate(model, tok, convs, max_new_tokens=12, stop_on_repeat=False)
    for ids, got in zip(encode_prompts(tok, convs), ours):
        with torch.no_grad():
            out = model.generate(
                torch.tensor([ids]),
                max_new_tokens=12,
                do_sample=False,
                eos_token_id=stop_ids(tok),
                pad_token_id=tok.pad_token_id,
            )[0, len(ids) :].tolist()
        stop = next((j for j, t in enumerate(out) if t in stop_ids(tok)), len(out))
        assert got.text == tok.decode(out[:stop], skip_special_tokens=True).strip()
        assert got.completion_tokens == stop and stop > 0


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, family_dir, family_tok):
    runs = {}

    def get(family):
        if family not in runs:
            runs[family] = make_tiny_lora_run(
                tmp_path_factory.mktemp(f"{family}-run") / "run", family_dir(family), family_tok(family)
            )
        return runs[family]

    return get


def probe_logits(model, tokenizer):
    from tunesmith.export import probe_ids

    with torch.no_grad():
        return model(input_ids=probe_ids(tokenizer)).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_merged_export_reloads_equal(family, lora_run, family_dir, family_tok):
    from peft import PeftModel

    from tunesmith.export import export

    run, tokenizer = lora_run(family), family_tok(family)
    out = export(run, "merged")
    want = probe_logits(PeftModel.from_pretrained(load(family_dir(family)), run / "final").eval(), tokenizer)
    assert (want - probe_logits(load(family_dir(family)), tokenizer)).abs().max() > 1e-2  # the adapter matters
    got = probe_logits(load(out), tokenizer)
    assert (got - want).abs().max().item() < 1e-5 * max(1.0, want.abs().max().item())


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_gguf_export_converts_or_says_why_not(family, lora_run):
    from tunesmith.export import export

    run = lora_run(family)
    if family in GGUF_REFUSED:
        with pytest.raises(UserError, match=GGUF_REFUSED[family]):
            export(run, "gguf", "f16")
        return
    report = json.loads((export(run, "gguf", "f16") / "export.json").read_text())
    assert report["verify"]["relative_diff"] <= report["verify"]["tolerance_relative"]
    assert report["verify"]["top1_agreement"] > 0.9


@pytest.mark.slow
def test_gguf_of_a_window_longer_than_the_probe_converts_with_a_warning(family_dir, family_tok, tmp_path):
    """Mistral 7B v0.1's case: a 4096-token window the GGUF drops, which the probe cannot see."""
    from tunesmith.export import export

    base = tmp_path / "mistral-4096"
    load(family_dir("mistral-window"), sliding_window=4096).save_pretrained(base)
    family_tok("mistral-window").save_pretrained(base)
    run = make_tiny_lora_run(tmp_path / "run", base, family_tok("mistral-window"))
    report = json.loads((export(run, "gguf", "f16") / "export.json").read_text())
    assert report["verify"]["relative_diff"] <= report["verify"]["tolerance_relative"]
    assert any("no sliding window" in w and "last 4096 tokens" in w for w in report["warnings"]), report["warnings"]

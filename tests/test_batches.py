"""The data path of training: loss masks under the chat template, step order, packing without
cross-attention, and the chunked LM-head loss."""

import pytest
import torch
import torch.nn.functional as F

from tunesmith import UserError
from tunesmith.data.batches import IGNORE, collate, encode, encode_examples, micro_batches, step_indices
from tunesmith.train.loss import linear_cross_entropy, use_varlen

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is a basket?"},
    {"role": "assistant", "content": "Everything a planner will buy this week."},
    {"role": "user", "content": "And a swap?"},
    {"role": "assistant", "content": "A draft answer we do not want to learn.", "weight": 0},
    {"role": "user", "content": "Try again."},
    {"role": "assistant", "content": "A cheaper item in place of one in the basket."},
]


def _loss_text(tok, ids, targets):
    return tok.decode([i for i, t in zip(ids, targets) if t])


def test_loss_only_on_assistant_replies_and_their_end_token(tokenizer):
    ids, targets = encode(tokenizer, CHAT)
    assert len(ids) == len(targets)
    assert _loss_text(tokenizer, ids, targets) == (
        "Everything a planner will buy this week.<|im_end|>A cheaper item in place of one in the basket.<|im_end|>"
    )
    # the assistant header the model is always given is not a target
    assert "assistant" not in _loss_text(tokenizer, ids, targets)


def test_train_on_prompt_adds_system_and_user_turns_but_not_weight_zero(tokenizer):
    ids, targets = encode(tokenizer, CHAT, train_on_prompt=True)
    text = _loss_text(tokenizer, ids, targets)
    assert "Be brief." in text and "What is a basket?" in text and "Try again." in text
    assert "A draft answer we do not want to learn." not in text
    assert sum(targets) > sum(encode(tokenizer, CHAT)[1])


def test_encoded_tokens_are_the_templates_tokens(tokenizer):
    ids, _ = encode(tokenizer, CHAT)
    assert ids == tokenizer.apply_chat_template(CHAT, tokenize=True, return_dict=True)["input_ids"]


def test_too_long_policies_and_examples_without_loss(tokenizer):
    examples = [
        {"messages": CHAT, "meta": {"id": "long"}},
        {"messages": CHAT[:2] + [{"role": "assistant", "content": "x", "weight": 0}], "meta": {"id": "none"}},
        {"messages": CHAT[:3], "meta": {"id": "short"}},
    ]
    n_long = len(encode(tokenizer, CHAT)[0])
    n_short = len(encode(tokenizer, CHAT[:3])[0])
    kept, report = encode_examples(tokenizer, examples, max_len=n_long - 1, too_long="drop")
    assert [e["index"] for e in kept] == [2]
    assert report["too_long_dropped"] == 1 and report["no_loss_tokens"] == 1
    kept, report = encode_examples(tokenizer, examples, max_len=n_short + 3, too_long="truncate")
    assert [len(e["ids"]) for e in kept] == [n_short + 3, n_short] and report["truncated"] == 1
    with pytest.raises(UserError, match=r"example 1 \(long\).*data.max_len"):
        encode_examples(tokenizer, examples, max_len=10, too_long="error")


def test_step_order_is_a_permutation_per_epoch_and_deterministic():
    n, g = 10, 4
    stream = [i for s in range(5) for i in step_indices(n, g, seed=3, step=s)]  # 20 = two epochs
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))
    assert stream[:10] != stream[10:]  # a fresh order each epoch
    assert step_indices(n, g, seed=3, step=2) == stream[8:12]  # resuming at a step continues the stream
    assert step_indices(n, g, seed=4, step=0) != stream[:4]


def test_micro_batches_split_a_step_between_processes_and_accumulation():
    encoded = [{"ids": [0] * (i + 1), "targets": [0, 1] + [0] * (i - 1) if i else [0], "index": i} for i in range(8)]
    ids = list(range(8))
    shares = [micro_batches(encoded, ids, rank, 2, 2) for rank in range(2)]
    assert [[len(mb) for mb in s] for s in shares] == [[2, 2], [2, 2]]
    seen = sorted(e["index"] for s in shares for mb in s for e in mb)
    assert seen == ids
    assert [e["index"] for e in shares[0][0]] == [3, 2]  # longest first: similar lengths share a micro-batch


def test_packed_layout_has_no_padding_and_labels_never_cross_examples():
    a = {"ids": [5, 6, 7], "targets": [0, 1, 1], "index": 0}
    b = {"ids": [8, 9], "targets": [0, 1], "index": 1}
    packed = collate([a, b], packing=True)
    assert packed["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert packed["labels"].tolist() == [[6, 7, IGNORE, 9, IGNORE]]  # 7 never predicts 8
    assert packed["cu_seqlens"] == [0, 3, 5]
    padded = collate([a, b], packing=False, pad_id=0)
    assert padded["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0]]
    assert padded["labels"].tolist() == [[6, 7, IGNORE], [9, IGNORE, IGNORE]]


def test_a_packed_example_sees_exactly_what_it_sees_alone(tiny_model_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    use_varlen(model)
    convs = [CHAT, CHAT[1:3], [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]]
    encoded = [
        {"ids": encode(tokenizer, c)[0], "targets": encode(tokenizer, c)[1], "index": i} for i, c in enumerate(convs)
    ]
    batch = collate(encoded, packing=True)
    with torch.no_grad():
        packed = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], cu_seqlens=batch["cu_seqlens"]
        ).logits[0]  # (sum of lengths, V)
        model.set_attn_implementation("sdpa")
        for e, start in zip(encoded, batch["cu_seqlens"]):
            alone = model(input_ids=torch.tensor([e["ids"]])).logits[0]
            assert (packed[start : start + len(e["ids"])] - alone).abs().max().item() < 1e-5
        # and without the varlen attention, position ids alone do NOT isolate examples here:
        # the test above would catch a packing that leaked.
        leaky = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        second = slice(batch["cu_seqlens"][1], batch["cu_seqlens"][2])
        alone = model(input_ids=torch.tensor([encoded[1]["ids"]])).logits[0]
        assert (leaky[second] - alone).abs().max().item() > 1e-3


def test_linear_cross_entropy_matches_full_logits_in_value_and_gradient():
    torch.manual_seed(0)
    h = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(100, 16, dtype=torch.float64, requires_grad=True)
    b = torch.randn(100, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 100, (37,))
    ours = linear_cross_entropy(h, w, y, b, chunk=5)  # 8 chunks, the last one short
    ours.backward()
    grads = [t.grad.clone() for t in (h, w, b)]
    for t in (h, w, b):
        t.grad = None
    ref = F.cross_entropy(h @ w.T + b, y, reduction="sum")
    ref.backward()
    assert abs(ours.item() - ref.item()) < 1e-10
    for g, t in zip(grads, (h, w, b)):
        assert (g - t.grad).abs().max().item() < 1e-10
    with torch.no_grad():
        assert abs(linear_cross_entropy(h, w, y, b, chunk=7).item() - ref.item()) < 1e-10


def test_the_lm_head_sees_only_positions_with_loss(tiny_model_dir, tokenizer, monkeypatch):
    """Prompt tokens never reach the LM head, so a longer prompt adds no (tokens, vocab) logits."""
    from transformers import AutoModelForCausalLM

    import tunesmith.train.loss as train_mod

    rows = []
    real = train_mod.linear_cross_entropy
    monkeypatch.setattr(
        train_mod, "linear_cross_entropy", lambda h, *a, **k: rows.append(h.shape[0]) or real(h, *a, **k)
    )
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    loss_model = train_mod.CausalLMLoss(model)
    answer = {"role": "assistant", "content": "A cheaper item in place of one in the basket."}
    for prompt in ("Swap?", "Tell me, in the words of the house style guide and at length, " * 20):
        e = dict(zip(("ids", "targets"), encode(tokenizer, [{"role": "user", "content": prompt}, answer])), index=0)
        loss_model(**collate([e], packing=False))
    n_answer = len(tokenizer(answer["content"] + "<|im_end|>", add_special_tokens=False)["input_ids"])
    assert rows == [n_answer, n_answer]

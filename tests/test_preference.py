"""Preference tuning: the pair formats and their checks, DPO and ORPO equal to TRL's on the same batch,
the reference as the starting point, and exact resume."""

import json
import math
import shutil

import pytest
import torch

from tunesmith import UserError
from tunesmith.config import TrainConfig, load_config
from tunesmith.data.validate import read_dataset
from tunesmith.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

# Text written for these tests: the house term is "pantry audit", "larder check" its rejected variant.
PAIRS = [
    ("Define the term for a visit to a household's food cupboard.", "A pantry audit is a visit.", "A larder check."),
    ("What do we call the weekly stock count?", "We call it a pantry audit.", "Folks say larder check, mostly."),
    ("Name the habit of planning three cook nights.", "Weekly planning.", "Meal prep."),
    ("Summarise the budget study in one line.", "Budgets set a ceiling; swaps keep meals cheap.", "Money was tight."),
]


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# ------------------------------------------------------------------------------------------ formats


def test_every_preference_format_reads_into_the_same_pair(tmp_path):
    q, good, bad = PAIRS[1]  # replies that differ from their first word: an implicit plain prompt is unambiguous
    user, chosen, rejected = (
        [{"role": "user", "content": q}],
        [{"role": "assistant", "content": good}],
        [{"role": "assistant", "content": bad}],
    )
    records = [
        {"prompt": q, "chosen": good, "rejected": bad},  # TRL, explicit prompt, plain
        {"prompt": user, "chosen": chosen, "rejected": rejected},  # TRL conversational = the workbench's export
        {"chosen": user + chosen, "rejected": user + rejected},  # TRL, implicit prompt, conversational
        {"chosen": f"{q} {good}", "rejected": f"{q} {bad}"},  # TRL, implicit prompt, plain
        {"instruction": q, "input": "", "chosen": good, "rejected": bad},  # LLaMA-Factory, alpaca
        {
            "conversations": [{"from": "human", "value": q}],
            "chosen": {"from": "gpt", "value": good},
            "rejected": {"from": "gpt", "value": bad},
        },  # LLaMA-Factory, sharegpt
    ]
    ds = read_dataset(_write(tmp_path / "pairs.jsonl", records))
    assert ds.format == "preference" and not ds.issues
    for ex in ds.examples:
        assert ex["messages"] == user + chosen and ex["rejected"] == rejected[0]


def test_bad_pairs_are_reported_with_their_line(tmp_path):
    q, good, bad = PAIRS[1]
    conv = lambda u, a: [{"role": "user", "content": u}, {"role": "assistant", "content": a}]  # noqa: E731
    records = [
        {"prompt": q, "chosen": good, "rejected": bad},
        {"prompt": q, "chosen": good, "rejected": f"  {good} "},  # 2: the same reply
        {"prompt": q, "chosen": good, "rejected": ""},  # 3: an empty side
        {"chosen": conv(q, good), "rejected": conv("Another question?", bad)},  # 4: prompts that disagree
        {"prompt": q, "chosen": [{"role": "user", "content": good}], "rejected": bad},  # 5: not a reply
        {"prompt": "", "chosen": good, "rejected": bad},  # 6: an empty prompt
    ]
    ds = read_dataset(_write(tmp_path / "pairs.jsonl", records))
    found = sorted((i.line, i.code) for i in ds.issues)
    assert found == [
        (2, "same-reply"),
        (3, "empty-content"),
        (4, "prompts-disagree"),
        (5, "pair-shape"),
        (6, "empty-content"),
    ]
    assert "the rejected reply" in next(str(i) for i in ds.issues if i.line == 3)
    assert ds.lines == [1]


def test_check_reports_a_pair_over_length_by_its_longer_side(tmp_path, tiny_model_dir):
    from tunesmith.data.check import run_check

    long_reply = " ".join(["pantry audit"] * 200)
    records = [{"prompt": q, "chosen": good, "rejected": bad} for q, good, bad in PAIRS * 3]
    records[4] = {"prompt": PAIRS[0][0], "chosen": "Short.", "rejected": long_reply}
    report = run_check(str(_write(tmp_path / "pairs.jsonl", records)), model=str(tiny_model_dir), max_len=128)
    over = [i for i in report["issues"] if i["code"] == "too-long"]
    assert [i["line"] for i in over] == [5]


# ------------------------------------------------------------------------------- equality with TRL


@pytest.fixture(scope="module")
def trl_setup(tmp_path_factory, tokenizer, tiny_model_dir):
    """TRL's DPOTrainer on a tiny LoRA model, and one batch of TRL's collator. Given an adapter, TRL
    keeps a frozen copy of it as the reference ("ref"), as we do from an SFT run; the trained adapter
    is then moved (B random) so that the policy differs from the reference."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    torch.manual_seed(1)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    data = [
        {
            "prompt": [{"role": "user", "content": q}],
            "chosen": [{"role": "assistant", "content": good}],
            "rejected": [{"role": "assistant", "content": bad}],
        }
        for q, good, bad in PAIRS
    ]
    args = DPOConfig(
        output_dir=str(tmp_path_factory.mktemp("trl")),
        per_device_train_batch_size=len(PAIRS),
        report_to=[],
        use_cpu=True,
        beta=0.1,
        bf16=False,
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(data), processing_class=tokenizer)
    with torch.no_grad():  # after the trainer has set the model up: B random, the adapter far from off
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    batch = next(iter(trainer.get_train_dataloader()))
    yield trainer, batch
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # TRL's Accelerator must not outlive these tests


def _ours_from_trl_batch(batch) -> list[dict]:
    """TRL's rows ([chosen..., rejected...], right-padded) as our encoded pairs: the same tokens."""
    rows = [
        {"ids": ids[: int(att.sum())].tolist(), "targets": comp[: int(att.sum())].tolist()}
        for ids, att, comp in zip(batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    ]
    half = len(rows) // 2
    return [
        {"chosen": c, "rejected": r, "ids": c["ids"] + r["ids"], "pos": i}
        for i, (c, r) in enumerate(zip(rows[:half], rows[half:]))
    ]


def _grads(model) -> dict:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _our_loss(model, pairs, t, tokenizer, packing=True):
    from tunesmith.data.batches import n_targets
    from tunesmith.train.loss import CausalLMLoss
    from tunesmith.train.preference import pair_batch, pair_loss, reference_weights, sequence_logps

    batch = pair_batch(pairs, packing, tokenizer.pad_token_id)
    lm = CausalLMLoss(model)
    ref = None
    if t.objective == "dpo":
        with torch.no_grad(), reference_weights(model):
            ref = sequence_logps(lm(**batch, reduce=False), batch, len(pairs))
    policy = sequence_logps(lm(**batch, reduce=False), batch, len(pairs))
    return pair_loss(t, policy, ref, len(pairs), sum(n_targets(p["chosen"]) for p in pairs))[0]


def test_a_packed_pair_computes_its_prompt_once_and_keeps_every_log_probability(tiny_model_dir, tokenizer):
    """The packed row holds each pair's prompt once: shorter than the two sides laid end to end by
    the prompt, yet each reply's log-probability (and its gradient) equals the padded batch's, where
    each side is a sequence of its own. The first pair's replies share their first word, which is a
    loss token, so the shared part must stop before it."""
    from tunesmith.models import load
    from tunesmith.train.loss import CausalLMLoss, use_varlen
    from tunesmith.train.preference import encode_pairs, pair_batch, sequence_logps, shared_prompt

    model, tok = load(str(tiny_model_dir), device="cpu")
    use_varlen(model)
    examples = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": good}],
         "rejected": {"role": "assistant", "content": bad}}
        for q, good, bad in PAIRS
    ]  # fmt: skip
    encoded, _ = encode_pairs(tok, examples, 256)
    prompts = [shared_prompt(p["chosen"], p["rejected"]) for p in encoded]
    first_reply = [p["chosen"]["targets"].index(1) for p in encoded]
    assert prompts == first_reply  # the whole prompt, and not the replies' common first word
    assert encoded[0]["chosen"]["ids"][first_reply[0]] == encoded[0]["rejected"]["ids"][first_reply[0]]
    lm = CausalLMLoss(model)
    packed, padded = (pair_batch(encoded, packing, tok.pad_token_id) for packing in (True, False))
    both_sides = sum(len(p["ids"]) for p in encoded)
    assert packed["input_ids"].shape[1] == both_sides - sum(n - 1 for n in prompts)
    results = []
    for batch in (packed, padded):
        model.zero_grad()
        lp = sequence_logps(lm(**batch, reduce=False), batch, len(encoded))
        (lp.chosen.sum() - 2 * lp.rejected.sum()).backward()
        results.append((lp, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (ours, our_grads), (alone, their_grads) = results
    for a, b in zip(ours, alone):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert (ours.chosen - ours.rejected).abs().min() > 1e-3  # the sides differ: a swap would show
    for name, grad in their_grads.items():
        torch.testing.assert_close(our_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("variant", ["sigmoid", "ipo", "hinge"])
def test_dpo_loss_and_gradients_equal_trls_on_the_same_batch(trl_setup, tokenizer, variant, monkeypatch):
    from tunesmith.train import preference
    from tunesmith.train.loss import use_varlen

    trainer, batch = trl_setup
    model = trainer.model
    assert set(model.peft_config) == {"default", "ref"}
    monkeypatch.setattr(preference, "REFERENCE", "ref")  # our reference switch, on TRL's copy of the start
    trainer.loss_types, trainer.beta = [variant], 0.1
    model.zero_grad()
    model.base_model.model.set_attn_implementation("sdpa")
    theirs = trainer.compute_loss(model, batch)
    theirs.backward()
    their_grads = _grads(model)

    model.zero_grad()
    use_varlen(model.base_model.model)  # ours: packed, one row, no padding
    ours = _our_loss(
        model, _ours_from_trl_batch(batch), TrainConfig(objective="dpo", dpo_loss=variant, beta=0.1), tokenizer
    )
    ours.backward()
    our_grads = _grads(model)
    assert abs(theirs.item() - math.log(2)) > 1e-3  # the policy differs from the reference: not a trivial loss
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-5)
    assert our_grads.keys() == their_grads.keys() and len(our_grads) > 0
    for name in their_grads:
        torch.testing.assert_close(our_grads[name], their_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_orpo_loss_and_gradients_equal_trls_definition(trl_setup, tokenizer):
    """TRL's ORPO odds-ratio term (its trainer's own odds_ratio_loss and get_batch_logps) on full logits,
    plus the chosen replies' mean token NLL; ours from the packed path. (TRL's ORPOTrainer also puts
    prompt tokens into the NLL; ours, like our SFT, only the reply.)"""
    from types import SimpleNamespace

    from trl.experimental.orpo import ORPOTrainer

    from tunesmith.train.loss import use_varlen

    trainer, batch = trl_setup
    model = trainer.model
    model.zero_grad()
    model.base_model.model.set_attn_implementation("sdpa")
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    half = len(labels) // 2
    mean_logps = ORPOTrainer.get_batch_logps(logits, labels, average_log_prob=True)
    fake = SimpleNamespace(beta=0.25, accelerator=SimpleNamespace(device="cpu"))
    ratio_losses = ORPOTrainer.odds_ratio_loss(fake, mean_logps[:half], mean_logps[half:])[0]
    nll = torch.nn.functional.cross_entropy(logits[:half, :-1].flatten(0, 1), labels[:half, 1:].flatten())
    theirs = nll - ratio_losses.mean()
    theirs.backward()
    their_grads = _grads(model)

    model.zero_grad()
    use_varlen(model.base_model.model)
    ours = _our_loss(model, _ours_from_trl_batch(batch), TrainConfig(objective="orpo", beta=0.25), tokenizer)
    ours.backward()
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-5)
    for name, grad in their_grads.items():
        torch.testing.assert_close(_grads(model)[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_token_log_probs_equal_log_softmax_in_value_and_gradient():
    from tunesmith.train.loss import token_log_probs

    torch.manual_seed(0)
    hidden = torch.randn(37, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    coeffs = torch.randn(37)
    ours = token_log_probs(hidden, weight, targets, chunk=8)  # five chunks, the last one short
    (ours * coeffs).sum().backward()
    ours_grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    ref = torch.log_softmax(hidden @ weight.T, -1).gather(1, targets[:, None]).squeeze(1)
    (ref * coeffs).sum().backward()
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(ours_grads[0], hidden.grad)
    torch.testing.assert_close(ours_grads[1], weight.grad)


def test_label_smoothing_makes_the_optimum_a_finite_margin():
    """Conservative DPO: with flip probability e the loss is least where sigmoid(beta * margin) = 1 - e."""
    from tunesmith.train.preference import DPO_LOSSES, Logps

    t = TrainConfig(objective="dpo", beta=0.5, label_smoothing=0.2)
    margins = torch.linspace(-10, 20, 3001)
    zeros = torch.zeros_like(margins)
    losses = DPO_LOSSES["sigmoid"](t, margins, zeros, Logps(zeros, zeros, zeros + 1, zeros + 1))
    best = margins[losses.argmin()].item()
    assert best == pytest.approx(math.log(0.8 / 0.2) / 0.5, abs=0.02)


# ----------------------------------------------------------------------------------------- training


def _pairs_file(path, n=24):
    records = []
    for i in range(n):
        q, good, bad = PAIRS[i % len(PAIRS)]
        records.append({"prompt": f"{q} (case {i})", "chosen": good, "rejected": bad, "meta": {"group": f"g{i % 6}"}})
    return _write(path, records)


def _overrides(tmp_path, model, out, *more):
    return [
        f"model.name={model}",
        f"data.train={_pairs_file(tmp_path / 'pairs.jsonl')}",
        "data.heldout_fraction=0.2",
        "train.max_steps=4",
        "train.batch_size=4",
        "train.lr=5e-3",
        "train.threads=1",
        "train.eval_every=2",
        f"train.output_dir={out}",
        *more,
    ]


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_dpo_from_an_sft_adapter_starts_at_its_reference(tmp_path, tiny_model_dir, tokenizer):
    """The reference is the starting adapter (held beside the trained one): at step 1 policy and
    reference agree, so the loss is log 2, although the adapter moves the logits away from the base."""
    from safetensors.torch import load_file

    from tunesmith.testing import make_tiny_lora_run

    sft = make_tiny_lora_run(tmp_path / "sft", tiny_model_dir, tokenizer)
    out = tmp_path / "dpo"
    run = train(
        load_config(None, _overrides(tmp_path, tiny_model_dir, out, "train.objective=dpo", f"train.init_from={sft}"))
    )
    logged = _metrics(run)
    assert logged[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert logged[-1]["loss"] < logged[0]["loss"] and logged[-1]["reward_accuracy"] > 0.5
    assert {"reward_margin", "logp_chosen", "logp_rejected", "eval_reward_accuracy"} <= logged[-1].keys()
    start = json.loads((sft / "final" / "adapter_config.json").read_text())
    final = json.loads((run / "final" / "adapter_config.json").read_text())
    assert final["r"] == start["r"] and not (run / "final" / "reference").exists()  # one adapter, the trained one
    summary = json.loads((run / "summary.json").read_text())
    start_params = sum(t.numel() for t in load_file(sft / "final" / "adapter_model.safetensors").values())
    assert summary["objective"] == "dpo" and summary["trainable_params"] == start_params  # the reference is frozen


def test_dpo_without_a_start_uses_the_base_and_orpo_trains(tmp_path, tiny_model_dir):
    dpo = train(load_config(None, _overrides(tmp_path, tiny_model_dir, tmp_path / "dpo", "train.objective=dpo")))
    assert _metrics(dpo)[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # a fresh adapter is the base
    orpo = train(load_config(None, _overrides(tmp_path, tiny_model_dir, tmp_path / "orpo", "train.objective=orpo")))
    logged = _metrics(orpo)
    assert logged[-1]["eval_loss"] < next(x for x in logged if "eval_loss" in x)["eval_loss"] + 1e-9
    assert logged[-1]["reward_margin"] > logged[0]["reward_margin"]


@pytest.mark.parametrize("method", ["full", "lora"])
def test_dpo_resumes_exactly(tmp_path, tiny_model_dir, tokenizer, method):
    """Full: the reference log-probs come back from RUN/reference/ (the model has moved since).
    LoRA from an SFT run: the frozen reference adapter is loaded again from that run."""
    from safetensors.torch import load_file

    from tunesmith.testing import make_tiny_lora_run

    common = ["train.objective=dpo", f"train.method={method}", "train.save_every=2", "train.lr=1e-3"]
    if method == "lora":
        common.append(f"train.init_from={make_tiny_lora_run(tmp_path / 'sft', tiny_model_dir, tokenizer)}")
    whole = train(load_config(None, _overrides(tmp_path, tiny_model_dir, tmp_path / "whole", *common)))
    if method == "full":
        table = load_file(whole / "reference" / "logps.safetensors")
        assert table["train"].shape[1] == 2 and (table["train"][:, 0] != 0).all()
    cut = tmp_path / "cut"
    shutil.copytree(whole, cut)
    for name in ("final", "summary.json", "checkpoints/step-000004"):
        shutil.rmtree(cut / name, ignore_errors=True) if (cut / name).is_dir() else (cut / name).unlink()
    train(load_config(None, _overrides(tmp_path, tiny_model_dir, cut, *common)), resume=True)
    weights = "model.safetensors" if method == "full" else "adapter_model.safetensors"
    ref, got = (load_file(r / "final" / weights) for r in (whole, cut))
    assert ref.keys() == got.keys()
    assert max((ref[k] - got[k]).abs().max().item() for k in ref) <= 1e-6
    assert [x["loss"] for x in _metrics(cut)] == pytest.approx([x["loss"] for x in _metrics(whole)], abs=1e-6)
    assert _metrics(cut)[-1]["reward_margin"] != 0  # the run moved: the weights compared are not the start


def test_preference_objective_on_chat_data_says_what_to_give(tmp_path, tiny_model_dir):
    from tunesmith.testing import make_chats

    chats = make_chats(tmp_path / "chats.jsonl", n=20)
    cfg = load_config(
        None, [*_overrides(tmp_path, tiny_model_dir, tmp_path / "x", "train.objective=dpo"), f"data.train={chats}"]
    )
    with pytest.raises(UserError, match="not a preference pair.*fix"):
        train(cfg)
    with pytest.raises(UserError, match="train.objective='ppo' is not one of sft, dpo, orpo"):
        train(load_config(None, _overrides(tmp_path, tiny_model_dir, tmp_path / "y", "train.objective=ppo")))
    with pytest.raises(UserError, match="train.replay=0.2 mixes chat examples.*fix: train.replay=0"):
        train(
            load_config(
                None, _overrides(tmp_path, tiny_model_dir, tmp_path / "r", "train.objective=orpo", "train.replay=0.2")
            )
        )
    with pytest.raises(UserError, match="train.init_from=.*no finished run there"):
        train(load_config(None, _overrides(tmp_path, tiny_model_dir, tmp_path / "z", f"train.init_from={tmp_path}")))


def _margins(spec, pairs_path, max_len=256) -> list[float]:
    """log p(chosen) - log p(rejected) of each pair in a file under a model or run."""
    from tunesmith.data import load_examples
    from tunesmith.models import load
    from tunesmith.train.loss import CausalLMLoss
    from tunesmith.train.preference import encode_pairs, pair_batch, sequence_logps

    model, tok = load(str(spec), device="cpu")
    encoded, _ = encode_pairs(tok, load_examples(pairs_path), max_len)
    batch = pair_batch(encoded, packing=False, pad_id=tok.pad_token_id)
    with torch.no_grad():
        lp = sequence_logps(CausalLMLoss(model).eval()(**batch, reduce=False), batch, len(encoded))
    return (lp.chosen - lp.rejected).tolist()


def test_dpo_moves_the_property_its_pairs_teach_on_held_out_prompts(tmp_path, tiny_model_dir):
    """Chosen and rejected differ in one property (the house term against its rejected variant);
    after DPO, on prompts it never trained on, the model prefers the house term by more than it did
    at the start, and the paired 95 % interval of the change lies above zero."""
    from tunesmith.compare.stats import paired_bootstrap

    def pairs(path, questions):
        records = [
            {"prompt": q, "chosen": "That is the pantry audit.", "rejected": "That is the larder check."}
            for q in questions
        ]
        return _write(path, records)

    trained = pairs(tmp_path / "train.jsonl", [f"{q} (case {i})" for i in range(6) for q, _, _ in PAIRS])
    held = pairs(tmp_path / "held.jsonl", [f"Tell me, for household {i}, what the weekly count is." for i in range(12)])
    out = tmp_path / "dpo"
    overrides = _overrides(tmp_path, tiny_model_dir, out, "train.objective=dpo", "train.max_steps=8")
    run = train(load_config(None, [*overrides, f"data.train={trained}", f"data.heldout={held}"]))
    before, after = _margins(tiny_model_dir, held), _margins(run, held)
    diff, low, high = paired_bootstrap(after, before)
    assert low > 0, (diff, low, high)
    assert _metrics(run)[-1]["eval_reward_accuracy"] == 1.0

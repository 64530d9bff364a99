"""The training loop end to end on a tiny model: the run directory contract, exactness of the loss
across packing and accumulation, schedules, non-finite handling, early stopping, resume refusals."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from tunesmith import UserError
from tunesmith.config import load_config
from tunesmith.data.split import split_heldout
from tunesmith.testing import make_chats
from tunesmith.train import heldout_loss, latest_checkpoint, train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def chats(tmp_path_factory):
    return make_chats(tmp_path_factory.mktemp("data") / "train.jsonl")


def config(model_dir, data, out, *overrides):
    return load_config(
        None,
        [
            f"model.name={model_dir}",
            f"data.train={data}",
            f"train.output_dir={out}",
            "train.max_steps=6",
            "train.batch_size=4",
            "train.lr=1e-2",
            "lora.r=4",
            "data.heldout_fraction=0.2",
            "train.threads=1",
            *overrides,
        ],
    )


def trained(run):
    return load_file(
        run / "checkpoints" / sorted(p.name for p in (run / "checkpoints").glob("step-*"))[-1] / "model.safetensors"
    )


def close(a, b, tol):
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a) < tol


def test_a_lora_run_writes_the_contract(tiny_model_dir, chats, tmp_path):
    run = train(
        config(tiny_model_dir, chats, tmp_path / "run", "train.eval_every=3", "train.save_every=2", "train.keep_last=2")
    )
    assert (run / "config.yaml").exists()
    data = json.loads((run / "data.json").read_text())
    assert data["train"]["examples"] + data["heldout"]["examples"] == 40 and data["heldout"]["examples"] >= 4
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(r["loss"] > 0 and r["grad_norm"] > 0 and r["tokens_per_s"] > 0 and r["lr"] > 0 for r in rows)
    assert [r["step"] for r in rows if "eval_loss" in r] == [3, 6]
    assert math.isclose(rows[-1]["eval_ppl"], math.exp(rows[-1]["eval_loss"]), rel_tol=1e-3)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000004", "step-000006"]  # keep_last=2
    assert all((p / "COMPLETE").exists() for p in (run / "checkpoints").iterdir())
    adapter = json.loads((run / "final" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(tiny_model_dir)  # the spec as given
    assert (run / "final" / "adapter_model.safetensors").exists() and (run / "final" / "tokenizer.json").exists()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["method"] == "lora" and summary["trainable_params"] > 0
    assert summary["final_eval_loss"] == rows[-1]["eval_loss"] and summary["tokens"] == rows[-1]["tokens"]

    # the final adapter loads through models.load and reproduces the held-out loss logged in training
    from tunesmith.data import load_examples
    from tunesmith.models import load

    model, tok = load(str(run), device="cpu")
    _, held = split_heldout(load_examples(chats), 0.2, 0)
    assert abs(heldout_loss(model, tok, held)["loss"] - rows[-1]["eval_loss"]) < 1e-4


def test_full_fine_tuning_saves_a_loadable_model(tiny_model_dir, chats, tmp_path):
    run = train(
        config(tiny_model_dir, chats, tmp_path / "run", "train.method=full", "train.lr=1e-3", "train.max_steps=3")
    )
    assert (run / "final" / "config.json").exists() and (run / "final" / "model.safetensors").exists()
    assert "tunesmith" not in (run / "final" / "config.json").read_text()  # no custom attention leaks out
    from tunesmith.models import load

    base, _ = load(str(tiny_model_dir), device="cpu")
    tuned, _ = load(str(run), device="cpu")
    weights = trained(run)
    w = tuned.state_dict()["model.layers.0.mlp.up_proj.weight"]
    assert torch.equal(w, weights["model.model.layers.0.mlp.up_proj.weight"])
    assert not torch.equal(w, base.state_dict()["model.layers.0.mlp.up_proj.weight"])


def test_loss_is_per_token_whatever_the_split_into_micro_batches(tiny_model_dir, chats, tmp_path):
    """4 examples a step as 1x4, 4x1 or 2x2 micro-batches, packed or padded: the same step."""
    runs = {}
    for name, extra in {
        "1x4": ["train.batch_size=4", "train.grad_accum=1"],
        "4x1": ["train.batch_size=1", "train.grad_accum=4"],
        "2x2-padded": ["train.batch_size=2", "train.grad_accum=2", "train.packing=false"],
    }.items():
        runs[name] = train(config(tiny_model_dir, chats, tmp_path / name, "train.max_steps=3", *extra))
    losses = {
        n: [json.loads(x)["loss"] for x in (r / "metrics.jsonl").read_text().splitlines()] for n, r in runs.items()
    }
    for n in losses:
        assert all(abs(a - b) < 1e-5 for a, b in zip(losses[n], losses["1x4"])), (n, losses)
        assert close(trained(runs[n]), trained(runs["1x4"]), 1e-5), n


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_schedules_with_warmup(schedule):
    from tunesmith.train.loop import lr_at

    lrs = [lr_at(step, 0.01, warmup_steps=2, total_steps=6, schedule=schedule) for step in range(6)]
    assert lrs[:2] == pytest.approx([0.005, 0.01])  # warmup reaches the peak at its last step
    after = [i / 4 for i in range(4)]  # progress through the 4 steps after warmup
    expected = {
        "constant": [1.0] * 4,
        "linear": [1 - p for p in after],
        "cosine": [0.5 * (1 + math.cos(math.pi * p)) for p in after],
    }[schedule]
    assert lrs[2:] == pytest.approx([0.01 * e for e in expected])


def test_the_loop_logs_the_schedules_learning_rate(tiny_model_dir, chats, tmp_path):
    from tunesmith.train.loop import lr_at

    run = train(
        config(
            tiny_model_dir,
            chats,
            tmp_path / "run",
            "train.schedule=cosine",
            "train.warmup_steps=2",
            "train.max_steps=4",
            "data.heldout_fraction=0",
        )
    )
    lrs = [json.loads(x)["lr"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([lr_at(s, 0.01, 2, 4, "cosine") for s in range(4)])


def test_gradient_clipping_logs_the_norm_before_clipping(tiny_model_dir, chats, tmp_path, monkeypatch):
    seen = []  # the gradient norm the optimizer actually steps with
    real_step = torch.optim.AdamW.step

    def step(self, *a, **k):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        seen.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    a = train(config(tiny_model_dir, chats, tmp_path / "a", "train.max_steps=2", "train.max_grad_norm=0"))
    b = train(config(tiny_model_dir, chats, tmp_path / "b", "train.max_steps=2", "train.max_grad_norm=1e-3"))
    logged_a = [json.loads(x)["grad_norm"] for x in (a / "metrics.jsonl").read_text().splitlines()]
    logged_b = [json.loads(x)["grad_norm"] for x in (b / "metrics.jsonl").read_text().splitlines()]
    assert seen[:2] == pytest.approx(logged_a, rel=1e-4)  # no clipping: the optimizer sees the logged norm
    assert logged_b[0] == pytest.approx(logged_a[0], rel=1e-4) and logged_b[0] > 1e-2  # logged before clipping
    assert seen[2:] == pytest.approx([1e-3, 1e-3], rel=1e-3)  # ... and clipped to max_grad_norm


def _poison_step(monkeypatch, bad_step):
    import tunesmith.train.loop as train_mod

    calls = {"n": 0}
    real = train_mod.CausalLMLoss.forward

    def forward(self, **batch):
        out = real(self, **batch)
        if self.training:
            calls["n"] += 1
            if calls["n"] == bad_step:
                return out * float("nan")
        return out

    monkeypatch.setattr(train_mod.CausalLMLoss, "forward", forward)


def _all_finite(run):
    for ckpt in (run / "checkpoints").glob("step-*"):
        for v in load_file(ckpt / "model.safetensors").values():
            assert torch.isfinite(v).all()
        opt = torch.load(ckpt / "optimizer.pt", weights_only=True)
        for s in opt["state"].values():
            assert all(torch.isfinite(t).all() for t in s.values() if torch.is_tensor(t))


def test_non_finite_loss_stops_naming_the_step_and_last_good_checkpoint(tiny_model_dir, chats, tmp_path, monkeypatch):
    _poison_step(monkeypatch, bad_step=4)
    with pytest.raises(UserError, match=r"non-finite loss at step 4 .*Last good checkpoint: .*step-000002"):
        train(config(tiny_model_dir, chats, tmp_path / "run", "train.save_every=2"))
    run = tmp_path / "run"
    assert latest_checkpoint(run).name == "step-000002"
    assert not (run / "final").exists()
    _all_finite(run)


def test_non_finite_loss_skipped_by_config_is_counted(tiny_model_dir, chats, tmp_path, monkeypatch):
    _poison_step(monkeypatch, bad_step=3)
    run = train(config(tiny_model_dir, chats, tmp_path / "run", "train.on_nonfinite=skip", "train.save_every=1"))
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("skipped", False) for r in rows] == [False, False, True, False, False, False]
    assert rows[2]["loss"] is None
    assert json.loads((run / "summary.json").read_text())["skipped_steps"] == 1
    _all_finite(run)


def test_early_stopping_keeps_the_best_weights(tiny_model_dir, chats, tmp_path, monkeypatch):
    import tunesmith.train.loop as train_mod

    evals = iter([5.0, 4.0, 4.5, 4.6, 4.7, 4.8])
    monkeypatch.setattr(train_mod, "mean_loss", lambda *a: next(evals))
    run = train(
        config(
            tiny_model_dir,
            chats,
            tmp_path / "run",
            "train.eval_every=1",
            "train.early_stopping_patience=2",
            "train.save_every=1",
            "train.keep_last=10",
        )
    )
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["stopped_early"] and summary["best_eval_step"] == 2
    best = {
        k.removeprefix("model."): v
        for k, v in load_file(run / "checkpoints" / "step-000002" / "model.safetensors").items()
    }
    final = load_file(run / "final" / "adapter_model.safetensors")
    for k, v in final.items():  # peft names drop the adapter name
        match = [b for n, b in best.items() if n.replace(".default", "") == k]
        assert len(match) == 1 and torch.equal(match[0], v)


def test_resume_refuses_changed_settings_and_lists_them(tiny_model_dir, chats, tmp_path):
    run = train(config(tiny_model_dir, chats, tmp_path / "run", "train.max_steps=2"))
    with pytest.raises(UserError, match="already holds a run"):
        train(config(tiny_model_dir, chats, run, "train.max_steps=2"))
    other = make_chats(tmp_path / "other.jsonl", n=40, seed=1)
    with pytest.raises(UserError) as err:
        train(config(tiny_model_dir, other, run, "train.max_steps=4", "train.batch_size=2"), resume=True)
    message = str(err.value)
    assert "train.batch_size: 4 -> 2" in message and "train data" in message
    assert "model.name" not in message
    # unchanged settings and more steps: resumes
    train(config(tiny_model_dir, chats, run, "train.max_steps=4"), resume=True)
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def test_heldout_loss_agrees_with_transformers_own_loss(tiny_model):
    model, tok = tiny_model
    chat = [{"role": "user", "content": "What is a basket?"}, {"role": "assistant", "content": "What you will buy."}]
    ours = heldout_loss(model, tok, [{"messages": chat}])
    ids = tok.apply_chat_template(chat, tokenize=True, return_dict=True)["input_ids"]
    prompt = tok.apply_chat_template(chat[:1], tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
    labels = [-100] * len(prompt) + ids[len(prompt) :]
    labels[-1] = -100  # the newline after <|im_end|> is not trained
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss.item()
    assert ours["tokens"] == sum(x != -100 for x in labels)
    assert abs(ours["loss"] - ref) < 1e-5


@pytest.mark.slow
def test_training_the_embedded_model_lowers_heldout_loss(tmp_path):
    """Eight steps (about 4k tokens) on the bundled example repository: the held-out loss must go down."""
    from tunesmith.data import load_examples
    from tunesmith.models import load

    data = _pantry_chats(tmp_path / "pantry.jsonl")
    held_path = tmp_path / "held.jsonl"
    rows = data.read_text().splitlines()
    studies = sorted({json.loads(r)["meta"]["group"] for r in rows})
    held_studies = set(studies[-3:])
    held_path.write_text("".join(r + "\n" for r in rows if json.loads(r)["meta"]["group"] in held_studies))
    data.write_text("".join(r + "\n" for r in rows if json.loads(r)["meta"]["group"] not in held_studies))
    base, tok = load("smollm2-135m-instruct", device="cpu")
    before = heldout_loss(base, tok, load_examples(held_path), max_len=256)["loss"]
    del base
    run = train(
        load_config(
            None,
            [
                "model.name=smollm2-135m-instruct",
                f"data.train={data}",
                f"data.heldout={held_path}",
                f"train.output_dir={tmp_path / 'run'}",
                "train.max_steps=8",
                "train.batch_size=2",
                "train.lr=1e-3",
                "train.warmup_steps=1",
                "data.max_len=256",
                "data.too_long=truncate",
            ],
        )
    )
    after = json.loads((run / "summary.json").read_text())["final_eval_loss"]
    assert after < before - 0.2, (before, after)


def _pantry_chats(path):
    """Draft insight -> house-style insight, from the bundled Pantry repository (one group per study)."""
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1] / "src" / "tunesmith" / "examples" / "pantry" / "studies"
    with open(path, "w") as f:
        for ins in sorted(root.glob("*/insights/*.md")):
            _, head, body = ins.read_text().split("---\n", 2)
            meta = yaml.safe_load(head)
            chat = [
                {"role": "user", "content": f"Rewrite as a Pantry Research insight:\n{meta['draft']}"},
                {"role": "assistant", "content": body.strip()},
            ]
            f.write(json.dumps({"messages": chat, "meta": {"id": meta["id"], "group": meta["study"]}}) + "\n")
    return path


def test_cpu_threads_leave_busy_cores_to_other_processes(monkeypatch):
    from tunesmith import cpu

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    for others, expected in [(0.0, 4), (0.3, 4), (1.2, 3), (3.6, 1), (9.0, 1), (2.0, 2)]:
        assert cpu.threads(0, others=others) == expected, others
    assert cpu.threads(3) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert cpu.threads(0) == 2


@pytest.mark.serial  # another test worker's load would fill the free core it needs
def test_others_meter_sees_another_process_and_not_ourselves():
    import subprocess
    import sys
    import time

    from tunesmith import cpu

    meter = cpu.OthersMeter()
    end = time.process_time() + 0.5
    while time.process_time() < end:  # our own work is not "others"
        pass
    mine = meter.read()
    if mine > len(cpu._cores()) - 1.2:  # other work already fills the cores: one more spinner cannot show
        pytest.skip(f"the machine is busy ({mine:.1f} cores in use by others); the meter needs a free core")
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        meter.read()
        time.sleep(1.0)
        theirs = meter.read()
    finally:
        spinner.kill()
    assert theirs - mine > 0.5, (mine, theirs)  # one spinning process: about one core more

"""Two processes (accelerate launch, gloo on CPU) reach the weights of one process with the same
global batch: the loop's data split and per-token loss make DDP a pure speed-up."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tunesmith.testing import make_chats


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.subprocess
def test_two_processes_equal_one_with_the_same_global_batch(tiny_model_dir, tmp_path):
    data = make_chats(tmp_path / "train.jsonl", n=40)
    common = [
        f"model.name={tiny_model_dir}",
        f"data.train={data}",
        "train.max_steps=4",
        "lora.r=4",
        "train.lr=1e-2",
        "data.heldout_fraction=0.2",
        "train.log_examples=true",
        "train.threads=1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    two = subprocess.run(
        [
            accelerate,
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(_free_port()),
            "-m",
            "tunesmith.cli",
            "train",
            *common,
            "train.batch_size=2",
            f"train.output_dir={tmp_path / 'two'}",
        ],
        env={**env, "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 process(es)" in two.stdout
    one = subprocess.run(
        [
            sys.executable,
            "-m",
            "tunesmith.cli",
            "train",
            *common,
            "train.batch_size=4",
            f"train.output_dir={tmp_path / 'one'}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr[-3000:]

    runs = {name: tmp_path / name for name in ("one", "two")}
    a, b = (load_file(r / "final" / "adapter_model.safetensors") for r in runs.values())
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    assert any((a[k] != 0).any() for k in a if "lora_B" in k)  # it did train
    metrics = {n: [json.loads(x) for x in (r / "metrics.jsonl").read_text().splitlines()] for n, r in runs.items()}
    for x, y in zip(metrics["one"], metrics["two"]):
        assert abs(x["loss"] - y["loss"]) < 1e-5 and abs(x["grad_norm"] - y["grad_norm"]) < 1e-4 * x["grad_norm"]
    assert metrics["one"][-1]["eval_loss"] == pytest.approx(metrics["two"][-1]["eval_loss"], abs=1e-5)
    assert (runs["one"] / "examples.jsonl").read_text() == (runs["two"] / "examples.jsonl").read_text()
    summary = json.loads((runs["two"] / "summary.json").read_text())
    assert (
        summary["processes"] == 2
        and summary["tokens"] == json.loads((runs["one"] / "summary.json").read_text())["tokens"]
    )

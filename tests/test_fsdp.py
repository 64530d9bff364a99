"""FSDP through `accelerate launch`: 2 processes reach the weights of 1 with the same global batch,
a sharded run resumes exactly, and a run trained sharded exports merged.

accelerate turns FSDP on only for accelerator devices (accelerate/state.py: the FSDP branch sits under
MULTI_GPU and its kin); on CPU `--use_fsdp` runs DDP. So on CPU the test here checks that tunesmith says
so and still trains right; the FSDP tests themselves are marked `gpu` and need two CUDA devices.
docs/train.md, "Scaling out", has the commands and the reason.
"""

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

FSDP = [
    "--use_fsdp",
    "--fsdp_version",
    "2",
    "--fsdp_auto_wrap_policy",
    "TRANSFORMER_BASED_WRAP",
    "--fsdp_transformer_layer_cls_to_wrap",
    "LlamaDecoderLayer",
    "--fsdp_state_dict_type",
    "SHARDED_STATE_DICT",
]
two_gpus = pytest.mark.skipif(
    not (__import__("torch").cuda.is_available() and __import__("torch").cuda.device_count() >= 2),
    reason="FSDP runs on accelerator devices only (accelerate picks DDP on CPU): needs 2 CUDA devices",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _common(model_dir, data, *extra) -> list[str]:
    return [
        f"model.name={model_dir}",
        f"data.train={data}",
        "lora.r=4",
        "train.lr=1e-2",
        "data.heldout_fraction=0.2",
        "train.log_examples=true",
        "train.threads=1",
        "train.packing=true",
        *extra,
    ]


def _launch(processes: int, args: list[str], env: dict, launcher: list[str]) -> subprocess.CompletedProcess:
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    cmd = [accelerate, "launch", "--num_processes", str(processes), "--num_machines", "1"]
    cmd += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    cmd += [*launcher, "-m", "tunesmith.cli", "train", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _one(args: list[str], env: dict) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "tunesmith.cli", "train", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _max_diff(a: Path, b: Path) -> float:
    x, y = (load_file(r / "final" / "adapter_model.safetensors") for r in (a, b))
    assert x.keys() == y.keys()
    return max((x[k] - y[k]).abs().max().item() for k in x)


@pytest.mark.subprocess
def test_fsdp_asked_on_cpu_is_said_to_run_ddp_and_trains_right(tiny_model_dir, tmp_path):
    data = make_chats(tmp_path / "train.jsonl", n=40)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "CUDA_VISIBLE_DEVICES": ""}
    common = _common(tiny_model_dir, data, "train.max_steps=3")
    two = _launch(2, [*common, "train.batch_size=2", f"train.output_dir={tmp_path / 'two'}"], env, FSDP)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "FSDP was asked for, but accelerate runs MULTI_CPU here" in two.stdout
    assert json.loads((tmp_path / "two" / "data.json").read_text())["distributed"] == "MULTI_CPU"
    one = _one([*common, "train.batch_size=4", f"train.output_dir={tmp_path / 'one'}"], env)
    assert one.returncode == 0, one.stderr[-3000:]
    assert _max_diff(tmp_path / "one", tmp_path / "two") < 1e-5


@pytest.mark.gpu
@pytest.mark.subprocess
@two_gpus
def test_fsdp_two_processes_equal_one_resume_exactly_and_export_merged(tiny_model_dir, tmp_path, assert_same_run):
    data = make_chats(tmp_path / "train.jsonl", n=40)
    env = {**os.environ, "TQDM_DISABLE": "1"}
    # a constant schedule: a run stopped at step 2 then resumed to 4 sees the lr the 4-step run saw
    common = _common(tiny_model_dir, data, "model.dtype=float32", "train.schedule=constant")
    steps = 4
    sharded = [*common, "train.batch_size=2", "train.save_every=2"]
    full = _launch(2, [*sharded, f"train.max_steps={steps}", f"train.output_dir={tmp_path / 'two'}"], env, FSDP)
    assert full.returncode == 0, full.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "data.json").read_text())["distributed"] == "FSDP"
    one = _one([*common, "train.batch_size=4", f"train.max_steps={steps}", f"train.output_dir={tmp_path / 'one'}"], env)
    assert one.returncode == 0, one.stderr[-3000:]
    assert _max_diff(tmp_path / "one", tmp_path / "two") < 1e-5

    # stop at step 2 (a sharded checkpoint), resume to step 4: the same run as the uninterrupted one
    half = _launch(2, [*sharded, "train.max_steps=2", f"train.output_dir={tmp_path / 'resumed'}"], env, FSDP)
    assert half.returncode == 0, half.stderr[-3000:]
    rest = [*sharded, f"train.max_steps={steps}", f"train.output_dir={tmp_path / 'resumed'}", "--resume"]
    resumed = _launch(2, rest, env, FSDP)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(tmp_path / "resumed", tmp_path / "two", steps)

    export = subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", "export", str(tmp_path / "two"), "--format", "merged"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert export.returncode == 0, export.stderr[-3000:]
    assert "verified: merged logits equal base + adapter" in export.stdout

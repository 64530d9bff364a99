"""Crashes lose nothing: kill -9 at a random step and resume gives the uninterrupted run's weights
and example order; a save killed halfway is never taken for complete; SIGTERM saves and exits."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tunesmith.config import load_config
from tunesmith.testing import make_chats
from tunesmith.train import latest_checkpoint, train

STEPS = 24


pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.subprocess]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir):
    """The data and the overrides every run here shares; lora dropout makes the RNG state matter."""
    root = tmp_path_factory.mktemp("resume")
    data = make_chats(root / "train.jsonl", n=50)
    overrides = [
        f"model.name={tiny_model_dir}",
        f"data.train={data}",
        f"train.max_steps={STEPS}",
        "train.batch_size=2",
        "train.save_every=2",
        "train.keep_last=3",
        "lora.r=4",
        "lora.dropout=0.1",
        "train.lr=1e-2",
        "train.log_examples=true",
        "train.eval_every=6",
        "data.heldout_fraction=0.1",
        "train.threads=1",
    ]
    return root, overrides


@pytest.fixture(scope="module")
def reference(setup):
    root, overrides = setup
    return train(load_config(None, [*overrides, f"train.output_dir={root / 'reference'}"]))


def _cli(overrides, out, *extra):
    return [sys.executable, "-m", "tunesmith.cli", "train", *overrides, f"train.output_dir={out}", *extra]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def _steps_logged(run):
    try:
        return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def _wait_for_step(proc, run, step, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(
                f"training ended (rc {proc.returncode}) before step {step}: {proc.stderr.read()[-2000:]}"
            )
        logged = _steps_logged(run)
        if logged and logged[-1] >= step:
            return logged[-1]
        time.sleep(0.005)
    raise AssertionError(f"step {step} not reached in {timeout} s")


def test_kill_9_at_a_random_step_then_resume_is_exact(setup, reference, assert_same_run):
    root, overrides = setup
    run = root / "killed"
    seed = int(os.environ.get("TUNESMITH_TEST_SEED") or random.randrange(2**32))
    print(f"kill seed {seed} (rerun with TUNESMITH_TEST_SEED={seed})")
    kill_at = random.Random(seed).randint(3, STEPS - 4)
    proc = subprocess.Popen(_cli(overrides, run), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    reached = _wait_for_step(proc, run, kill_at)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "final").exists(), "the run finished before it could be killed"
    print(f"killed at step {reached} (aimed at {kill_at}); resuming from {latest_checkpoint(run)}")
    train(load_config(None, [*overrides, f"train.output_dir={run}"]), resume=True)
    assert_same_run(run, reference, STEPS)


def test_a_save_killed_halfway_is_never_taken_for_complete(setup, reference, assert_same_run):
    root, overrides = setup
    run = root / "half-saved"
    # Die in the middle of writing the third checkpoint (step 6): its optimizer file is cut short.
    script = (
        "import os, sys, torch\n"
        "from tunesmith.cli import main\n"
        "real, seen = torch.save, []\n"
        "def save(obj, path, *a, **k):\n"
        "    real(obj, path, *a, **k)\n"
        "    if str(path).endswith('optimizer.pt'):\n"
        "        seen.append(path)\n"
        "        if len(seen) == 3:\n"
        "            os.truncate(path, 64)\n"
        "            os._exit(137)\n"
        "torch.save = save\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, *_cli(overrides, run)[3:]], env=ENV, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 137, proc.stderr[-2000:]
    ckpts = run / "checkpoints"
    assert (ckpts / ".tmp-step-000006").is_dir() and not (ckpts / "step-000006").exists()
    assert latest_checkpoint(run).name == "step-000004"
    # a directory renamed into place whose COMPLETE marker never came is not complete either
    shutil.copytree(ckpts / "step-000004", ckpts / "step-000008")
    (ckpts / "step-000008" / "COMPLETE").unlink()
    assert latest_checkpoint(run).name == "step-000004"

    train(load_config(None, [*overrides, f"train.output_dir={run}"]), resume=True)
    assert not (ckpts / ".tmp-step-000006").exists()  # leftovers are cleaned up on resume
    assert_same_run(run, reference, STEPS)


def test_sigterm_saves_a_checkpoint_and_exits(setup, reference, assert_same_run):
    root, overrides = setup
    run = root / "terminated"
    proc = subprocess.Popen(_cli(overrides, run), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_step(proc, run, 3)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143, out[-2000:]
    last = _steps_logged(run)[-1]
    assert last < STEPS and f"SIGTERM: saved step {last}" in out
    ckpt = latest_checkpoint(run)
    assert ckpt.name == f"step-{last:06d}" and (ckpt / "COMPLETE").exists()
    assert not (run / "final").exists()
    train(load_config(None, [*overrides, f"train.output_dir={run}"]), resume=True)
    assert_same_run(run, reference, STEPS)

"""Kill storm: a run SIGKILLed again and again, at random moments inside training steps and inside
checkpoint saves, resumed after every kill, ends with exactly the weights, losses and example order
of a run that was never interrupted. The seed is printed; KILL_STORM_SEED=N replays a storm.

    pytest -q tests/reliability/test_kill_storm.py                 # fast: 12 kills
    pytest -q -m soak tests/reliability/test_kill_storm.py -s      # the figure: 50 kills
"""

import json
import os
import random
import signal
import time

import pytest
from reliability_kit import fork_train, make_chats, train_overrides

from tunesmith.config import load_config
from tunesmith.train import train
from tunesmith.train.checkpoints import latest_checkpoint, verify_checkpoint

pytestmark = pytest.mark.subprocess  # forks the trainers it kills


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_chats(tmp_path_factory.mktemp("storm") / "train.jsonl", n=60)


def _reference(tmp_path_factory, model_dir, data, steps):
    out = tmp_path_factory.mktemp("reference") / "run"
    return train(load_config(None, [*train_overrides(model_dir, data, steps), f"train.output_dir={out}"]))


def _logged_steps(run):
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [json.loads(x)["step"] for x in lines]
    except (FileNotFoundError, ValueError, KeyError):  # a line cut short by the kill
        return []


def _in_save(run) -> bool:
    """A kill landed inside a save when it left a temp dir or a step dir without its COMPLETE marker."""
    root = run / "checkpoints"
    return root.is_dir() and any(
        d.name.startswith(".tmp-") or (d.name.startswith("step-") and not (d / "COMPLETE").exists())
        for d in root.iterdir()
    )


def _saving_now(run) -> bool:
    root = run / "checkpoints"
    try:
        return any(name.startswith(".tmp-") for name in os.listdir(root))
    except FileNotFoundError:
        return False


def storm(run, overrides, kills, seed, log) -> dict:
    """Kill the run `kills` times, resuming after each; let the last life finish. Returns the figures."""
    rng = random.Random(seed)
    figures = {
        "seed": seed,
        "kills": 0,
        "kills_in_save": 0,
        "kills_in_step": 0,
        "kills_before_training": 0,
        "resumes": 0,
        "corrupt_resumes": 0,
    }
    resume, deadline = False, time.time() + 60 * kills
    while True:
        before = _logged_steps(run)[-1:] or [0]
        pid, status, done = fork_train(overrides, resume, log), None, 0
        if figures["kills"] < kills:
            # Half the kills wait for a save to start and strike 0-15 ms into it (safetensors, torch.save,
            # fsync, rename, COMPLETE, pruning); the others strike 0-150 ms after the run has made progress.
            aim_save = rng.random() < 0.5
            delay = rng.uniform(0, 0.015 if aim_save else 0.15)
            while time.time() < deadline:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done or (_saving_now(run) if aim_save else (_logged_steps(run)[-1:] or [0])[0] > before[0]):
                    break
                time.sleep(0.001)
            status = status if done else None
            if status is None:
                time.sleep(delay)
                os.kill(pid, signal.SIGKILL)
        if status is None:
            status = os.waitpid(pid, 0)[1]
        if os.WIFEXITED(status):
            assert os.WEXITSTATUS(status) == 0, (
                f"a life of the run failed (exit {os.WEXITSTATUS(status)}):\n{open(log).read()[-3000:]}"
            )
            if (run / "final").exists():
                return figures
        assert time.time() < deadline, f"the storm did not finish: {figures}"
        figures["kills"] += 1
        if _in_save(run):
            figures["kills_in_save"] += 1
        elif latest_checkpoint(run) is None and not _logged_steps(run):
            figures["kills_before_training"] += 1
        else:
            figures["kills_in_step"] += 1
        ckpt = latest_checkpoint(run)
        if ckpt is not None:
            figures["resumes"] += 1
            # What the next life resumes from must be whole: every file as its manifest says.
            if verify_checkpoint(ckpt) is not None:
                figures["corrupt_resumes"] += 1
        resume = True  # what a user does after a crash, whether or not the run got to its first save


def _run_storm(tmp_path, tmp_path_factory, tiny_model_dir, data, steps, kills, assert_same_run):
    seed = int(os.environ.get("KILL_STORM_SEED") or random.SystemRandom().randrange(10**6))
    print(f"\nkill storm seed {seed} (replay: KILL_STORM_SEED={seed})")
    reference = _reference(tmp_path_factory, tiny_model_dir, data, steps)
    run = tmp_path / "stormed"
    overrides = [*train_overrides(tiny_model_dir, data, steps), f"train.output_dir={run}"]
    t0 = time.time()
    figures = storm(run, overrides, kills, seed, tmp_path / "lives.log")
    diff = assert_same_run(run, reference, steps)
    figures.update(max_abs_weight_diff=diff, seconds=round(time.time() - t0, 1))
    print(f"kill storm: {json.dumps(figures)}")
    assert figures["kills"] == kills and figures["corrupt_resumes"] == 0
    assert figures["kills_in_save"] >= 1 and figures["kills_in_step"] >= 1
    return figures


def test_kill_storm_fast(tmp_path, tmp_path_factory, tiny_model_dir, data, assert_same_run):
    _run_storm(tmp_path, tmp_path_factory, tiny_model_dir, data, steps=30, kills=12, assert_same_run=assert_same_run)


@pytest.mark.slow
@pytest.mark.soak
def test_kill_storm_50(tmp_path, tmp_path_factory, tiny_model_dir, data, assert_same_run):
    _run_storm(tmp_path, tmp_path_factory, tiny_model_dir, data, steps=100, kills=50, assert_same_run=assert_same_run)

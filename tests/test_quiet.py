"""What a verb prints on stderr is ours: no library warning, no foreign progress bar.

Warnings only reach stderr outside pytest (pytest records them), so the verbs run in a child
process, one after another, as a user would run them on the tiny model.
"""

import subprocess
import sys

import pytest

SCRIPT = r"""
import sys
from pathlib import Path
from tunesmith.cli import main
from tunesmith.testing import make_chats
root, model = Path(sys.argv[1]), sys.argv[2]
data = make_chats(root / "train.jsonl", n=24)
run = root / "run"
verbs = [
    ["check", str(data), "--model", model, "--no-probe"],
    ["train", f"model.name={model}", f"data.train={data}", f"train.output_dir={run}", "train.max_steps=2",
     "train.batch_size=2", "lora.r=4", "data.heldout_fraction=0.2", "train.threads=1"],
    ["compare", str(run / "config.yaml"), "compare.arms=zero-shot,fine-tuned", "compare.max_examples=2",
     "generate.max_new_tokens=4", f"compare.output_dir={root / 'report'}", "--run", str(run)],
    ["export", str(run), "--format", "merged", "--out", str(root / "merged")],
    ["generate", str(run), "--prompt", "hi", "--max-new-tokens", "4"],
]
for argv in verbs:
    print(f"=== {argv[0]}", file=sys.stderr, flush=True)
    print(f"=== rc {main(argv)}", file=sys.stderr, flush=True)
"""


@pytest.mark.subprocess
def test_verbs_print_only_our_own_lines_on_stderr(tiny_model_dir, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), str(tiny_model_dir)],
        capture_output=True,
        text=True,
        timeout=600,
        env={"OMP_NUM_THREADS": "1", **__import__("os").environ},
    )
    lines = [ln.strip() for ln in proc.stderr.replace("\r", "\n").splitlines() if ln.strip()]
    assert [ln for ln in lines if ln.startswith("=== rc")] == ["=== rc 0"] * 5, proc.stderr[-3000:]
    # ours: the stage markers above and the training bar
    foreign = [ln for ln in lines if not (ln.startswith("=== ") or ln.startswith("train:"))]
    assert foreign == []

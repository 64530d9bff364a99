"""The run directory's layout, in one place: what `tunesmith train` writes and what resume, compare,
export, serve and the workbench read back.

    from tunesmith import rundir
    run_dir / rundir.FINAL          # runs/x/final: the adapter or the full model

    runs/x/
      config.yaml        the resolved config the run trained with
      data.json          data hashes, split sizes, steps
      metrics.jsonl      one line per logged step (loss, lr, tokens/s; held-out loss when evaluated)
      examples.jsonl     the order in which training saw the examples
      checkpoints/       step-NNNNNN/, each complete once it holds COMPLETE
      final/             the trained adapter (peft) or full model (safetensors)
      summary.json       what the run took and reached
      compare/           `tunesmith compare --run`: results.json, samples.jsonl, report.md, report.html
      reference/         a preference run's reference log-probs (train.objective=dpo|orpo)
"""

from __future__ import annotations

CONFIG = "config.yaml"
DATA = "data.json"
METRICS = "metrics.jsonl"
EXAMPLES = "examples.jsonl"
CHECKPOINTS = "checkpoints"
COMPLETE = "COMPLETE"  # a checkpoint directory's completion marker, written last
FINAL = "final"
SUMMARY = "summary.json"
COMPARE = "compare"
REFERENCE = "reference"  # dpo/orpo: the reference model's log-probs, computed once per run

# what a compare writes into its output directory (a run's compare/, or -o)
RESULTS = "results.json"
SAMPLES = "samples.jsonl"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"

# What a run directory holds; a directory with anything else in it is someone's, not a run.
ENTRIES = {CONFIG, DATA, METRICS, EXAMPLES, CHECKPOINTS, FINAL, SUMMARY, COMPARE, REFERENCE}

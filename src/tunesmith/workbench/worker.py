"""What a workbench job process runs: one of the CLI's own verbs, then its exit code in JOB_DIR/rc.

    python -m tunesmith.workbench.worker JOB_DIR        # JOB_DIR/job.json says what

job.json is {"argv": [verb, ...]} — exactly what `tunesmith VERB ...` would run — or, for check,
{"check": {"config": PATH, "out": PATH}} (check's report as JSON in `out`, not on stdout), or for a
collection of preference pairs {"collect": {...}} (workbench/collect.py's sample). The rc file
is how the server learns how a job ended after it restarted and is no longer the job's parent: an rc
of 143 is a SIGTERM stop (training saved a checkpoint first); no rc at all means the process died.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path


def run_check(config: str, out: str) -> int:
    from tunesmith.config import load_config
    from tunesmith.data.check import format_report
    from tunesmith.data.check import run_check as check
    from tunesmith.train.probe import probe

    cfg = load_config(config)
    report = check(
        cfg.data.train,
        cfg.data.heldout or None,
        cfg.model.name,
        cfg.data.max_len,
        cfg.data.too_long,
        cfg.data.format,
        probe=probe,
    )
    report["text"] = format_report(report)
    print(report["text"])
    tmp = Path(out).with_suffix(".tmp")
    tmp.write_text(json.dumps(shortened(report), indent=1, ensure_ascii=False))
    os.replace(tmp, out)
    return 0 if report["ok"] else 1


# The project page shows the first issues and the counts: check.json keeps no more than that, so a
# dataset with a million bad lines makes a report of kilobytes, not hundreds of megabytes.
MAX_ISSUES, MAX_TEXT = 200, 20_000


def shortened(report: dict) -> dict:
    """The report as the workbench keeps it: the first MAX_ISSUES issues (issues_total says how
    many there were) and the first MAX_TEXT characters of its text."""
    issues = report.get("issues") or []
    text = report.get("text", "")
    cut = (
        f"\n… {len(text) - MAX_TEXT:,} more characters: run `tunesmith check` for all of it."
        if len(text) > MAX_TEXT
        else ""
    )
    return {**report, "issues": issues[:MAX_ISSUES], "issues_total": len(issues), "text": text[:MAX_TEXT] + cut}


def main(job_dir: str) -> int:
    from tunesmith import UserError

    job = json.loads((Path(job_dir) / "job.json").read_text())
    # Verbs without their own SIGTERM handling stop cleanly too (training installs its own: it saves first).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        if "check" in job:
            rc = run_check(**job["check"])
        elif "collect" in job:
            from tunesmith.workbench.collect import sample

            rc = sample(**job["collect"])
        else:
            from tunesmith.cli import main as cli

            rc = cli(job["argv"])
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 1
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        rc = 2
    except BaseException:
        import traceback

        traceback.print_exc()
        rc = 1
    sys.stdout.flush()
    sys.stderr.flush()
    tmp = Path(job_dir) / "rc.tmp"
    tmp.write_text(str(rc))
    os.replace(tmp, Path(job_dir) / "rc")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

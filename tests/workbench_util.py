"""Helpers the workbench tests share: a live server in a thread, a finished run with a verdict
(written directly, no model), the bundled repository as a zip."""

import io
import json
import socket
import threading
import time
import zipfile
from pathlib import Path

PANTRY = Path(__file__).resolve().parents[1] / "src" / "tunesmith" / "examples" / "pantry"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn running `app` on a free port in a daemon thread."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


def pantry_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(PANTRY.rglob("*")):
            if f.is_file():
                z.write(f, "pantry/" + str(f.relative_to(PANTRY)))
    return buf.getvalue()


def fake_finished_run(root: Path, samples: list[dict], results: dict, pid: str = "demo-000001") -> int:
    """A project with one finished training job whose run holds a verdict; returns the job id."""
    from tunesmith.workbench import db

    con = db.connect(root)
    folder = root / "projects" / pid
    run = folder / "runs" / "1"
    (run / "compare").mkdir(parents=True)
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "config.yaml").write_text("model:\n  name: smollm2-135m-instruct\n")
    (run / "config.yaml").write_text("model:\n  name: smollm2-135m-instruct\n")
    (run / "compare" / "results.json").write_text(json.dumps(results))
    (run / "compare" / "report.html").write_text("<html><body><h1>Verdict</h1><h2>Quality</h2></body></html>")
    (run / "compare" / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    con.execute(
        "INSERT INTO projects (id, name, kind, source, model, created) "
        "VALUES (?, 'demo', 'dataset', 'x.jsonl', 'm', 0)",
        (pid,),
    )
    cur = con.execute(
        "INSERT INTO jobs (project, kind, status, run_dir, created) VALUES (?, 'train', 'done', ?, 0)", (pid, str(run))
    )
    return cur.lastrowid


def csrf_of(html: str) -> str:
    return html.split('name="csrf-token" content="')[1].split('"')[0]

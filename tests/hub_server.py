"""A local stand-in for the Hugging Face Hub: the part of its HTTP protocol `huggingface_hub` uses.

    with FakeHub() as hub:                        # a thread on 127.0.0.1, port 0
        hub.add("acme/tiny", files, tags=["v1"])  # a commit of files (name -> bytes) on main
        os.environ["HF_ENDPOINT"] = hub.url

What it answers, as huggingface_hub 2.x asks (file_download.py, _snapshot_download.py, hf_api.py):
  GET  /api/models/ORG/NAME/revision/REV   repo info: {"id", "sha", "siblings"}
  GET  /api/models/ORG/NAME/tree/REV       the file list: type, path, size, oid, and lfs for weights
  HEAD /ORG/NAME/resolve/REV/FILE          X-Repo-Commit, ETag, Content-Length; for LFS files a 302 to
                                           the "CDN" (this server under the name `localhost`, another host
                                           to the client) carrying X-Linked-Etag and X-Linked-Size
  GET  the same, or /cdn/SHA256            the bytes; `Range: bytes=N-` answers 206 with Content-Range
Errors carry the hub's X-Error-Code: RepoNotFound (404), RevisionNotFound (404), GatedRepo (401
without a token, 403 with one that has no access). `cut` ({file name, or sha256 for the CDN: bytes})
makes the next GET of that file stop after so many bytes and close the connection; `claim_size` makes
the listing and HEAD report another size than the real one; `fail` makes the next GET of a file answer
500. Every request is logged as (method, path, Range) in `requests`.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

LFS = (".safetensors", ".gguf", ".bin")


class FakeHub:
    def __init__(self):
        self.repos: dict[str, dict] = {}
        self.blobs: dict[str, bytes] = {}  # sha256 -> bytes, what the CDN serves
        self.requests: list[tuple[str, str, str]] = []
        self.cut: dict[str, int] = {}
        self.fail: set[str] = set()
        self.claim_size: dict[str, int] = {}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.cdn = f"http://localhost:{self.server.server_port}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def add(self, repo_id: str, files: dict[str, bytes], tags=(), gated_token: str | None = None) -> str:
        """A new commit of `files` on main (and on each tag); its sha."""
        repo = self.repos.setdefault(repo_id, {"refs": {}, "commits": {}, "gated_token": gated_token})
        sha = hashlib.sha1(repr((repo_id, len(repo["commits"]), sorted(files))).encode()).hexdigest()
        repo["commits"][sha] = dict(files)
        for ref in ("main", *tags):
            repo["refs"][ref] = sha
        for data in files.values():
            self.blobs[hashlib.sha256(data).hexdigest()] = data
        return sha

    def paths(self, method: str = "GET") -> list[str]:
        return [p for m, p, _ in self.requests if m == method]


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet: the log is hub.requests
            pass

        def do_HEAD(self):
            self._route(head=True)

        def do_GET(self):
            self._route(head=False)

        # ------------------------------------------------------------------ routing

        def _route(self, head: bool):
            path = unquote(urlparse(self.path).path)
            hub.requests.append((self.command, path, self.headers.get("Range", "")))
            if m := re.fullmatch(r"/cdn/([0-9a-f]{64})", path):
                return self._bytes(hub.blobs[m[1]], head, name=m[1])
            if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/(revision|tree)/([^/]+)(/.*)?", path):
                repo_id, what, rev = m[1], m[2], m[3]
                found = self._find(repo_id, rev)
                if found is None:
                    return
                sha, files = found
                if what == "revision":
                    info = {"id": repo_id, "sha": sha, "siblings": [{"rfilename": f} for f in files]}
                    return self._json(info)
                return self._json([self._entry(repo_id, f, data) for f, data in files.items()])
            if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
                found = self._find(m[1], m[2])
                if found is None:
                    return
                sha, files = found
                if m[3] not in files:
                    return self._error(404, "EntryNotFound", f"{m[3]} does not exist", commit=sha)
                return self._file(m[1], sha, m[3], files[m[3]], head)
            self._error(404, "", "no such route")

        def _find(self, repo_id: str, rev: str):
            repo = hub.repos.get(repo_id)
            if repo is None:
                return self._error(404, "RepoNotFound", "Repository not found")
            if repo["gated_token"] is not None:
                auth = self.headers.get("Authorization", "")
                if not auth:
                    return self._error(401, "GatedRepo", "Access to this model is restricted. Please log in.")
                if auth != f"Bearer {repo['gated_token']}":
                    return self._error(403, "GatedRepo", "You have not accepted this model's terms.")
            sha = repo["refs"].get(rev, rev if rev in repo["commits"] else None)
            if sha is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return sha, repo["commits"][sha]

        # ------------------------------------------------------------------ answers

        def _entry(self, repo_id: str, name: str, data: bytes) -> dict:
            size = hub.claim_size.get(name, len(data))
            entry = {"type": "file", "path": name, "size": size, "oid": hashlib.sha1(data).hexdigest()}
            if name.endswith(LFS):
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": size, "pointerSize": 134}
            return entry

        def _file(self, repo_id: str, sha: str, name: str, data: bytes, head: bool):
            size = hub.claim_size.get(name, len(data))
            if name.endswith(LFS):  # the hub sends LFS files to its CDN, another host
                digest = hashlib.sha256(data).hexdigest()
                self.send_response(302)
                self.send_header("Location", f"{hub.cdn}/cdn/{digest}")
                self.send_header("X-Repo-Commit", sha)
                self.send_header("X-Linked-Etag", f'"{digest}"')
                self.send_header("X-Linked-Size", str(size))
                self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self._bytes(data, head, name=name, commit=sha)

        def _bytes(self, data: bytes, head: bool, name: str, commit: str = ""):
            if name in hub.fail and not head:
                hub.fail.discard(name)
                return self._error(500, "", "Internal Error")
            start = 0
            if m := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "")):
                start = int(m[1])
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            if commit:
                self.send_header("X-Repo-Commit", commit)
            self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            if head:
                return
            body = data[start:]
            if name in hub.cut:  # a file name, or for the CDN the sha256 it serves
                self.wfile.write(body[: hub.cut.pop(name)])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

        def _json(self, value):
            body = json.dumps(value).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: int, code: str, message: str, commit: str = ""):
            body = json.dumps({"error": message}).encode()
            self.send_response(status)
            if code:
                self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            if commit:
                self.send_header("X-Repo-Commit", commit)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return None

    return Handler

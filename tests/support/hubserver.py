"""A small Hugging Face Hub on 127.0.0.1, speaking the HTTP API that huggingface_hub's client uses.

Enough of the protocol for snapshot_download and upload_folder, pointed at it with
HF_ENDPOINT (or endpoint=): repo info per revision, the recursive tree, `resolve`
with the hub's headers (X-Repo-Commit, ETag = git blob SHA-1, X-Linked-Etag /
X-Linked-Size = SHA-256 and size for LFS files, Range requests), the error codes
the client maps to exceptions (RepoNotFound, RevisionNotFound, EntryNotFound,
GatedRepo with 401 without a token and 403 with a wrong one), and the upload
path: create repo, preupload (everything "regular"), one NDJSON commit.

Faults for tests: `cut_next[path] = n` ends the next GET of that file after n
bytes; `requests` logs (method, path, Range header) of every request.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".parquet", ".gguf")
TYPES = {"models": "model", "datasets": "dataset"}


def blobs_of(snapshot: str) -> dict[str, str]:
    """For a snapshot huggingface_hub downloaded: path in repo -> the blob file its link points to."""
    out = {}
    for root, _, files in os.walk(snapshot):
        for name in files:
            link = os.path.join(root, name)
            out[os.path.relpath(link, snapshot)] = os.path.realpath(link)
    return out


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    gated: bool = False

    def commit(self, files: dict[str, bytes], ref: str = "main") -> str:
        sha = hashlib.sha1(json.dumps(sorted((k, git_sha1(v)) for k, v in files.items())).encode()).hexdigest()
        sha = hashlib.sha1((sha + str(len(self.commits))).encode()).hexdigest()
        self.commits[sha] = dict(files)
        self.refs[ref] = sha
        return sha

    def resolve(self, rev: str) -> str | None:
        return rev if rev in self.commits else self.refs.get(rev)


class Hub:
    """The server's state; tests add repos and read what was uploaded."""

    def __init__(self, token: str = "hf_good_token"):
        self.token = token
        self.repos: dict[tuple[str, str], Repo] = {}
        self.cut_next: dict[str, int] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    def add(self, repo_id: str, files: dict[str, bytes], repo_type: str = "model", gated: bool = False) -> Repo:
        repo = self.repos.setdefault((repo_type, repo_id), Repo(gated=gated))
        repo.commit(files)
        return repo

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def gets(self, name: str) -> list[str | None]:
        """The Range header of every GET of the file `name` (under /resolve/) this hub served."""
        return [
            rng
            for method, path, rng in self.requests
            if method == "GET" and path.endswith(f"/{name}") and "/resolve/" in path
        ]

    def start(self) -> Hub:
        hub = self

        class Handler(_Handler):
            state = hub

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: Hub

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    # --- plumbing ---------------------------------------------------------------------------

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, value: Any, status: int = 200) -> None:
        self._send(status, json.dumps(value).encode(), {"Content-Type": "application/json"})

    def _error(self, status: int, code: str, message: str) -> None:
        self._send(status, json.dumps({"error": message}).encode(), {"X-Error-Code": code, "X-Error-Message": message})

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _repo(self, repo_type: str, repo_id: str) -> Repo | None:
        """The repo if it exists and this caller may read it; otherwise the error is already sent."""
        repo = self.state.repos.get((repo_type, repo_id))
        if repo is None:
            self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
            return None
        auth = self.headers.get("Authorization", "")
        if repo.gated and auth != f"Bearer {self.state.token}":
            status = 401 if not auth else 403
            self._error(status, "GatedRepo", f"Access to {repo_id} is restricted")
            return None
        return repo

    def _commit(self, repo: Repo, rev: str) -> str | None:
        sha = repo.resolve(unquote(rev))
        if sha is None:
            self._error(404, "RevisionNotFound", f"Revision {unquote(rev)} not found")
        return sha

    # --- routes -----------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        with self.state.lock:
            self.state.requests.append((self.command, path, self.headers.get("Range")))
        if m := re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)/revision/(.+)", path):
            return self._info(TYPES[m[1]], m[2], m[3])
        if m := re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", path):
            return self._tree(TYPES[m[1]], m[2], m[3], (m[4] or "").strip("/"))
        if m := re.fullmatch(r"/(datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            return self._resolve("dataset" if m[1] else "model", m[2], m[3], unquote(m[4]))
        self._error(404, "NotFound", f"no route {path}")

    def _info(self, repo_type: str, repo_id: str, rev: str) -> None:
        if (repo := self._repo(repo_type, repo_id)) is None or (sha := self._commit(repo, rev)) is None:
            return
        files = repo.commits[sha]
        self._json({"id": repo_id, "sha": sha, "private": False, "siblings": [{"rfilename": p} for p in files]})

    def _tree(self, repo_type: str, repo_id: str, rev: str, under: str) -> None:
        if (repo := self._repo(repo_type, repo_id)) is None or (sha := self._commit(repo, rev)) is None:
            return
        entries = []
        for name, data in sorted(repo.commits[sha].items()):
            if under and not name.startswith(under + "/"):
                continue
            entry: dict[str, Any] = {"type": "file", "path": name, "size": len(data), "oid": git_sha1(data)}
            if name.endswith(LFS_SUFFIXES):
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            entries.append(entry)
        self._json(entries)

    def _resolve(self, repo_type: str, repo_id: str, rev: str, name: str) -> None:
        if (repo := self._repo(repo_type, repo_id)) is None or (sha := self._commit(repo, rev)) is None:
            return
        data = repo.commits[sha].get(name)
        if data is None:
            return self._error(404, "EntryNotFound", f"{name} not found")
        headers = {"X-Repo-Commit": sha, "ETag": f'"{git_sha1(data)}"', "Accept-Ranges": "bytes"}
        if name.endswith(LFS_SUFFIXES):
            headers["X-Linked-Etag"] = f'"{hashlib.sha256(data).hexdigest()}"'
            headers["X-Linked-Size"] = str(len(data))
        status, start = 200, 0
        if (rng := self.headers.get("Range")) and (m := re.fullmatch(r"bytes=(\d+)-", rng)):
            status, start = 206, int(m[1])
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        cut = self.state.cut_next.pop(name, None) if self.command == "GET" else None
        if cut is None:
            return self._send(status, body, headers)
        # A download cut in the middle: promise everything, send `cut` bytes, drop the connection.
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:cut])
        self.wfile.flush()
        self.close_connection = True

    # --- upload -----------------------------------------------------------------------------

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        body = self._body()
        if self.headers.get("Authorization", "") != f"Bearer {self.state.token}":
            return self._error(401, "Unauthorized", "Invalid credentials in Authorization header")
        if path == "/api/repos/create":
            req = json.loads(body)
            repo_id = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
            key = (req.get("type") or "model", repo_id)
            if key in self.state.repos:
                return self._error(409, "RepoExists", "You already created this repo")
            repo = self.state.repos[key] = Repo()
            repo.commit({".gitattributes": b"*.safetensors filter=lfs\n"})
            return self._json({"url": f"{self.state.url}/{repo_id}", "name": repo_id})
        if m := re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)/preupload/(.+)", path):
            files = json.loads(body)["files"]
            return self._json(
                {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
            )
        if m := re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)/commit/(.+)", path):
            return self._commit_upload(TYPES[m[1]], m[2], unquote(m[3]), body)
        self._error(404, "NotFound", f"no route {path}")

    def _commit_upload(self, repo_type: str, repo_id: str, rev: str, body: bytes) -> None:
        if (repo := self._repo(repo_type, repo_id)) is None or (sha := self._commit(repo, rev)) is None:
            return
        files = dict(repo.commits[sha])
        for line in body.splitlines():
            item = json.loads(line)
            if item["key"] == "file":
                files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            elif item["key"] == "deletedFile":
                files.pop(item["value"]["path"], None)
        with self.state.lock:
            new = repo.commit(files, rev)
        self._json({"commitUrl": f"{self.state.url}/{repo_id}/commit/{new}", "commitOid": new, "pullRequestUrl": None})

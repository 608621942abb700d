"""A plain HTTP file server on 127.0.0.1 with what downloads rely on: Content-Length, ETag, Range.

`files[path] = bytes` serves a file; `denied` paths answer 403; `cut_next[path] = n`
ends the next GET after n body bytes; `ranges` logs (path, Range header) per GET;
`no_ranges` makes it ignore Range (answer 200 with everything), as some servers do.
"""

from __future__ import annotations

import hashlib
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit


class FileServer:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.denied: set[str] = set()
        self.cut_next: dict[str, int] = {}
        self.ranges: list[tuple[str, str | None]] = []
        self.no_ranges = False
        state = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                self.do_GET()

            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                if self.command == "GET":
                    state.ranges.append((path, self.headers.get("Range")))
                if path in state.denied:
                    return self._reply(403, b"forbidden", {})
                if path not in state.files:
                    return self._reply(404, b"not found", {})
                data = state.files[path]
                headers = {"ETag": f'"{hashlib.md5(data).hexdigest()}"', "Accept-Ranges": "bytes"}
                status, start = 200, 0
                m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                same = self.headers.get("If-Range", headers["ETag"]) == headers["ETag"]
                if m and same and not state.no_ranges:
                    status, start = 206, int(m[1])
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                cut = state.cut_next.pop(path, None) if self.command == "GET" else None
                self._reply(status, data[start:], headers, cut)

            def _reply(self, status: int, body: bytes, headers: dict[str, str], cut: int | None = None) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body if cut is None else body[:cut])
                if cut is not None:
                    self.wfile.flush()
                    self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

"""A plain HTTP file server on 127.0.0.1 with what downloads rely on: Content-Length, ETag, Range.

`files[path] = bytes` serves a file; `denied` paths answer 403; `cut_next[path] = n`
ends the next GET after n body bytes; `ranges` logs (path, Range header) per GET;
`no_ranges` makes it ignore Range (answer 200 with everything), as some servers do.

What a hostile or careless server does, per path: `no_length` (no Content-Length, the
body ends when the connection closes), `no_etag`, `gzip` (a gzip body with
Content-Encoding whatever was asked), `head_length[path] = n` (HEAD announces n bytes),
`redirects[path] = url` (302 there). `authorization` logs each request's Authorization
header. `FileServer(tls=True)` serves https with a self-signed certificate for
127.0.0.1 whose PEM file is `ca_file` (point REQUESTS_CA_BUNDLE at it).
"""

from __future__ import annotations

import datetime
import gzip
import hashlib
import ipaddress
import re
import ssl
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit


def self_signed(directory: str) -> tuple[str, str]:
    """A certificate and key for 127.0.0.1 (PEM files in `directory`), made with `cryptography`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = f"{directory}/cert.pem", f"{directory}/key.pem"
    with open(cert_file, "wb") as fh:
        fh.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_file, "wb") as fh:
        fh.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return cert_file, key_file


class FileServer:
    def __init__(self, tls: bool = False) -> None:
        self.files: dict[str, bytes] = {}
        self.denied: set[str] = set()
        self.cut_next: dict[str, int] = {}
        self.ranges: list[tuple[str, str | None]] = []
        self.no_ranges = False
        self.no_length: set[str] = set()
        self.no_etag: set[str] = set()
        self.gzip: set[str] = set()
        self.head_length: dict[str, int] = {}
        self.redirects: dict[str, str] = {}
        self.authorization: list[tuple[str, str | None]] = []
        self.tls = tls
        state = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                self.do_GET()

            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                state.authorization.append((path, self.headers.get("Authorization")))
                if self.command == "GET":
                    state.ranges.append((path, self.headers.get("Range")))
                if path in state.redirects:
                    return self._reply(302, b"", {"Location": state.redirects[path]})
                if path in state.denied:
                    return self._reply(403, b"forbidden", {})
                if path not in state.files:
                    return self._reply(404, b"not found", {})
                data = state.files[path]
                if path in state.gzip:
                    data = gzip.compress(data)
                headers = {"ETag": f'"{hashlib.md5(data).hexdigest()}"', "Accept-Ranges": "bytes"}
                if path in state.gzip:
                    headers["Content-Encoding"] = "gzip"
                if path in state.no_etag:
                    del headers["ETag"]
                status, start = 200, 0
                m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                same = self.headers.get("If-Range", headers.get("ETag")) == headers.get("ETag")
                if m and same and not state.no_ranges:
                    status, start = 206, int(m[1])
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                cut = state.cut_next.pop(path, None) if self.command == "GET" else None
                if path in state.no_length:
                    headers["Connection"] = "close"
                    self.close_connection = True
                self._reply(status, data[start:], headers, cut, path)

            def _reply(
                self, status: int, body: bytes, headers: dict[str, str], cut: int | None = None, path: str = ""
            ) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                if path not in state.no_length:
                    length = state.head_length.get(path) if self.command == "HEAD" else None
                    self.send_header("Content-Length", str(length if length is not None else len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body if cut is None else body[:cut])
                if cut is not None:
                    self.wfile.flush()
                    self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.ca_file = None
        if tls:
            self._dir = tempfile.TemporaryDirectory()
            self.ca_file, key_file = self_signed(self._dir.name)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.ca_file, key_file)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

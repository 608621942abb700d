"""An S3-compatible store on 127.0.0.1 for tests: moto's standalone server, with IAM auth switched on.

Clients reach it exactly as they would MinIO or Ceph: AWS_ENDPOINT_URL plus an access
key. Auth is enforced (moto's /moto-api/reset-auth), so a wrong secret gets the real
SignatureDoesNotMatch and an unknown key InvalidAccessKeyId.

`CutProxy` sits in front of any HTTP server and ends the next response of a chosen
path after n body bytes (a download cut in the middle); it forwards the Host header
untouched, so SigV4 signatures still verify, and logs each request's Range header.
"""

from __future__ import annotations

import http.client
import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


@dataclass
class S3Store:
    endpoint: str
    access_key: str
    secret_key: str
    server: Any

    def env(self, endpoint: str | None = None) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": endpoint or self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
        }

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
        )


def start_moto() -> S3Store:
    """Start moto on a free port, create an IAM user allowed everything, then enforce auth."""
    import boto3
    import requests
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    iam = boto3.client(
        "iam", endpoint_url=endpoint, aws_access_key_id="boot", aws_secret_access_key="boot", region_name="us-east-1"
    )
    iam.create_user(UserName="kubetune")
    iam.put_user_policy(UserName="kubetune", PolicyName="all", PolicyDocument=json.dumps(POLICY))
    key = iam.create_access_key(UserName="kubetune")["AccessKey"]
    requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
    return S3Store(endpoint, key["AccessKeyId"], key["SecretAccessKey"], server)


class CutProxy:
    """A forwarding proxy that can cut the next response for a path after n bytes."""

    def __init__(self, upstream: str):
        self.upstream = urlsplit(upstream)
        self.cut_next: dict[str, int] = {}
        self.ranges: list[tuple[str, str | None]] = []
        self.methods: list[tuple[str, str]] = []  # (method, path) of every request
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = urlsplit(self.path).path
                proxy.ranges.append((path, self.headers.get("Range")))
                proxy.methods.append((self.command, path))
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=30)
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for key, value in self.headers.items():
                    conn.putheader(key, value)
                conn.endheaders(body or None)
                response = conn.getresponse()
                data = response.read()
                cut = proxy.cut_next.pop(path, None) if self.command == "GET" else None
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                        self.send_header(key, value)
                length = response.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
                self.send_header("Content-Length", length or "0")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data if cut is None else data[:cut])
                if cut is not None:
                    self.wfile.flush()
                    self.close_connection = True
                conn.close()

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

"""https:// (and http://) sources against a local file server with Range, ETag and faults."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from kubetune.api.contract import ExitCode
from kubetune.trainer.errors import SourceDenied, SourceMissing, TransferFailed
from kubetune.trainer.sources import fetch, store

DATA = os.urandom(200_000)


@pytest.fixture
def web():
    from fileserver import FileServer

    server = FileServer()
    server.files["/d/train.jsonl"] = DATA
    yield server
    server.stop()


def test_a_file_is_fetched_verified_and_reused(web):
    digest = hashlib.sha256(DATA).hexdigest()
    got = fetch(f"{web.url}/d/train.jsonl#sha256={digest}", "data")
    assert Path(got.local).name == "train.jsonl" and Path(got.local).read_bytes() == DATA
    assert got.record["sha256"] == digest and got.record["bytes"] == len(DATA)
    fetch(f"{web.url}/d/train.jsonl#sha256={digest}", "data")
    assert web.ranges == [("/d/train.jsonl", None)]  # the second run only asked (HEAD), never downloaded


def test_a_wrong_stated_hash_rejects_the_download(web):
    with pytest.raises(TransferFailed, match="corrupt") as exc:
        fetch(f"{web.url}/d/train.jsonl#sha256={'0' * 64}", "data")
    assert exc.value.exit_code == ExitCode.TRANSFER
    assert not list(Path(os.environ["KUBETUNE_CACHE_DIR"]).rglob("train.jsonl"))  # nothing unverified landed


def test_a_cut_download_resumes(web):
    big = DATA * 15  # 3 MB, cut after 2.5
    web.files["/d/big.bin"] = big
    web.cut_next["/d/big.bin"] = 2_500_000
    assert Path(fetch(f"{web.url}/d/big.bin").local).read_bytes() == big
    assert web.ranges == [("/d/big.bin", None), ("/d/big.bin", "bytes=2500000-")]  # every byte received is kept


def test_a_server_without_ranges_restarts_the_file(web):
    web.cut_next["/d/train.jsonl"] = 50_000
    web.no_ranges = True
    assert Path(fetch(f"{web.url}/d/train.jsonl").local).read_bytes() == DATA


def test_a_corrupted_cache_entry_is_fetched_again(web):
    local = Path(fetch(f"{web.url}/d/train.jsonl").local)
    local.write_bytes(b"x" * len(DATA))
    assert Path(fetch(f"{web.url}/d/train.jsonl").local).read_bytes() == DATA
    assert len(web.ranges) == 2


def test_missing_and_denied(web):
    web.denied.add("/d/secret.jsonl")
    with pytest.raises(SourceMissing, match="no such file"):
        fetch(f"{web.url}/d/nope.jsonl")
    with pytest.raises(SourceDenied, match="HTTP 403"):
        fetch(f"{web.url}/d/secret.jsonl")


# --- what cannot be verified is refused (issue 22, item 6) ------------------------------------------


def test_no_content_length_is_refused_unless_pinned(web):
    web.no_length.add("/d/train.jsonl")
    with pytest.raises(store.UnsafeSource, match="no Content-Length") as exc:
        fetch(f"{web.url}/d/train.jsonl", "data")
    assert exc.value.exit_code == ExitCode.SOURCE_DENIED
    assert not list(Path(os.environ["KUBETUNE_CACHE_DIR"]).rglob("train.jsonl"))
    pinned = fetch(f"{web.url}/d/train.jsonl#sha256={hashlib.sha256(DATA).hexdigest()}", "data")
    assert Path(pinned.local).read_bytes() == DATA


def test_a_cut_stream_without_content_length_is_not_taken_for_the_whole_file(web):
    """Pinned, but the connection drops early: the bytes so far fail the pin and nothing lands."""
    web.no_length.add("/d/train.jsonl")
    for _ in range(store.ATTEMPTS + 1):
        web.cut_next["/d/train.jsonl"] = 1000
    with pytest.raises(TransferFailed, match="corrupt"):
        fetch(f"{web.url}/d/train.jsonl#sha256={hashlib.sha256(DATA).hexdigest()}", "data")
    assert not list(Path(os.environ["KUBETUNE_CACHE_DIR"]).rglob("train.jsonl"))


def test_without_an_etag_an_old_partial_is_never_spliced(web):
    """A partial of an older version sits in the cache; the server gives no ETag: the file is fetched whole."""
    web.no_etag.add("/d/train.jsonl")
    entry = store.entry_dir("https", f"{web.url}/d/train.jsonl", "127.0.0.1/train.jsonl")
    part = entry / "partial" / "train.jsonl.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"OLD VERSION " * 100)
    part.with_suffix(".part.etag").write_text("")
    assert Path(fetch(f"{web.url}/d/train.jsonl", "data").local).read_bytes() == DATA
    assert web.ranges == [("/d/train.jsonl", None)]


def test_a_compressed_body_is_refused_not_inflated(web):
    web.files["/d/bomb.jsonl"] = b"\n" * 5_000_000  # 5 MB of newlines, ~5 kB gzipped
    web.gzip.add("/d/bomb.jsonl")
    with pytest.raises(store.UnsafeSource, match="gzip-encoded"):
        fetch(f"{web.url}/d/bomb.jsonl", "data")
    assert sum(p.stat().st_size for p in Path(os.environ["KUBETUNE_CACHE_DIR"]).rglob("*") if p.is_file()) < 100_000


def test_more_bytes_than_announced_are_refused(web):
    web.head_length["/d/train.jsonl"] = 1000
    with pytest.raises(store.UnsafeSource, match="more than the 1000 bytes"):
        fetch(f"{web.url}/d/train.jsonl", "data")
    assert sum(p.stat().st_size for p in Path(os.environ["KUBETUNE_CACHE_DIR"]).rglob("*.part")) == 0


@pytest.fixture
def tls(monkeypatch):
    from fileserver import FileServer

    server = FileServer(tls=True)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", server.ca_file)
    yield server
    server.stop()


def test_an_https_to_http_redirect_is_refused(tls, web):
    tls.redirects["/d/train.jsonl"] = f"{web.url}/d/train.jsonl"
    with pytest.raises(store.UnsafeSource, match="redirects https to plain http"):
        fetch(f"{tls.url}/d/train.jsonl", "data")
    assert web.ranges == [] and not [p for p, _ in web.authorization]  # the http server was never asked


def test_a_private_server_gets_the_token_from_a_mounted_secret_over_https_only(tls, web, tmp_path, monkeypatch):
    secret = tmp_path / "token"
    secret.write_text("s3cr3t-http-token\n")
    monkeypatch.setenv("KUBETUNE_HTTP_TOKEN_FILE", str(secret))
    tls.files["/d/train.jsonl"] = DATA
    assert Path(fetch(f"{tls.url}/d/train.jsonl", "data").local).read_bytes() == DATA
    assert {auth for _, auth in tls.authorization} == {"Bearer s3cr3t-http-token"}
    fetch(f"{web.url}/d/train.jsonl", "data")
    assert {auth for _, auth in web.authorization} == {None}  # never in clear over http

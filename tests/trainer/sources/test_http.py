"""https:// (and http://) sources against a local file server with Range, ETag and faults."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from kubetune.trainer.errors import EXIT_TRANSFER, SourceDenied, SourceMissing, TransferFailed
from kubetune.trainer.sources import fetch

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
    assert exc.value.exit_code == EXIT_TRANSFER
    assert not list(Path(os.environ["KUBETUNE_CACHE_DIR"]).rglob("train.jsonl"))  # nothing unverified landed


def test_a_cut_download_resumes(web):
    big = DATA * 15  # 3 MB: bytes are kept per 1 MiB block, so cut after two blocks
    web.files["/d/big.bin"] = big
    web.cut_next["/d/big.bin"] = 2_500_000
    assert Path(fetch(f"{web.url}/d/big.bin").local).read_bytes() == big
    assert web.ranges == [("/d/big.bin", None), ("/d/big.bin", f"bytes={2 << 20}-")]


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

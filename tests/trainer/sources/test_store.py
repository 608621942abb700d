"""The cache entry is a jail: no remote name or cache file writes or deletes outside it (moto, the file server).

An attacker here owns a bucket or a web server (or shares the cache): the names they
choose are `..` segments, absolute paths after `//`, `%2F`-encoded slashes, a rewritten
manifest, a symlink planted in the entry. Every case is refused with exit 11 (or, for a
manifest, ignored), and nothing outside the cache is created or removed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kubetune.api.contract import ExitCode
from kubetune.trainer.sources import fetch, store


def outside_files(root: Path, cache: Path) -> set[str]:
    return {str(p) for p in root.rglob("*") if p.is_file() and not p.is_relative_to(cache)}


@pytest.mark.parametrize(
    "key",
    ["evil/a/../../../../../../escaped.txt", "evil/{tmp}/escaped.txt", "evil/./x.txt"],
    ids=["dotdot", "double-slash-absolute", "dot"],
)
def test_an_s3_key_that_climbs_out_is_refused(s3, cache, tmp_path, key):
    """Each key, joined under the entry's files/ as it is, would land in tmp_path, outside the cache."""
    _, client, bucket = s3
    key = key.format(tmp=tmp_path)  # evil//tmp/pytest-.../escaped.txt: an absolute path after the prefix
    client.put_object(Bucket=bucket, Key="evil/config.json", Body=b"{}")
    client.put_object(Bucket=bucket, Key=key, Body=b"pwned")
    assert any(o["Key"] == key for o in client.list_objects_v2(Bucket=bucket)["Contents"])  # S3 keeps it as is
    before = outside_files(tmp_path, cache)
    with pytest.raises(store.UnsafeSource, match="would land outside the cache") as exc:
        fetch(f"s3://{bucket}/evil")
    assert exc.value.exit_code == ExitCode.SOURCE_DENIED
    assert outside_files(tmp_path, cache) == before


def test_a_rewritten_manifest_cannot_delete_outside_the_entry(s3, cache, tmp_path):
    """A co-tenant adds `../../victim` to the manifest: the next sync must not unlink it as 'gone from the source'."""
    _, client, bucket = s3
    client.put_object(Bucket=bucket, Key="m/config.json", Body=b"{}")
    local = Path(fetch(f"s3://{bucket}/m").local)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    entry = local.parent
    rel = os.path.relpath(victim, entry / "files")
    manifest = json.loads((entry / "manifest.json").read_text())
    manifest[rel] = {"etag": "x", "size": 7, "sha256": "0" * 64}
    manifest[str(victim)] = {"etag": "x", "size": 7, "sha256": "0" * 64}
    (entry / "manifest.json").write_text(json.dumps(manifest))
    assert Path(fetch(f"s3://{bucket}/m").local, "config.json").read_bytes() == b"{}"
    assert victim.read_text() == "keep me"
    assert set(json.loads((entry / "manifest.json").read_text())) == {"config.json"}


def test_a_symlink_planted_in_the_entry_is_not_written_through(s3, cache, tmp_path):
    _, client, bucket = s3
    client.put_object(Bucket=bucket, Key="m/sub/config.json", Body=b"{}")
    entry = store.entry_dir("s3", f"{os.environ['AWS_ENDPOINT_URL']}|{bucket}|m", f"{bucket}/m")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (entry / "files").mkdir(parents=True)
    (entry / "files" / "sub").symlink_to(elsewhere)
    with pytest.raises(store.UnsafeSource, match="symlink"):
        fetch(f"s3://{bucket}/m")
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("name", ["..%2F..%2F..%2F..%2Fescaped.txt", "%2E%2E"], ids=["encoded-slashes", "encoded-dots"])
def test_an_encoded_url_name_cannot_climb_out(cache, tmp_path, name):
    from fileserver import FileServer

    web = FileServer()
    try:
        web.files[f"/d/{name}"] = b"pwned"
        before = outside_files(tmp_path, cache)
        with pytest.raises(store.UnsafeSource, match="would land outside the cache"):
            fetch(f"{web.url}/d/{name}", "data")
        assert outside_files(tmp_path, cache) == before
    finally:
        web.stop()


@pytest.mark.parametrize("rel", ["../x", "/etc/passwd", "a//b", "a/./b", "", "a\\..\\b", "a\x00b"])
def test_inside_refuses_every_shape_of_escape(tmp_path, rel):
    with pytest.raises(store.UnsafeSource):
        store.inside(tmp_path, rel, "test")


def test_inside_accepts_nested_plain_names(tmp_path):
    assert store.inside(tmp_path, "a/b.c/.hidden", "test") == tmp_path / "a" / "b.c" / ".hidden"

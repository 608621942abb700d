"""hf:// sources against a local hub that speaks the Hugging Face HTTP API (tests/support/hubserver.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hubserver import blobs_of

from kubetune.api.contract import ExitCode
from kubetune.trainer.errors import SourceDenied, SourceMissing, TransferFailed
from kubetune.trainer.sources import fetch

CONFIG = json.dumps({"model_type": "llama"}).encode()
WEIGHTS = bytes(range(256)) * 400  # 100 KiB, an "LFS" file (.safetensors)


def test_model_repo_lands_in_the_cache_and_is_reused(hub):
    repo = hub.add("org/tiny", {"config.json": CONFIG, "model.safetensors": WEIGHTS})
    first = fetch("hf://org/tiny", "model")
    local = Path(first.local)
    assert (local / "config.json").read_bytes() == CONFIG
    assert (local / "model.safetensors").read_bytes() == WEIGHTS
    assert first.record["commit"] == repo.refs["main"] and first.record["repo"] == "org/tiny"
    served = len(hub.gets("model.safetensors"))
    second = fetch("hf://org/tiny", "model")
    assert second.local == first.local
    assert len(hub.gets("model.safetensors")) == served == 1  # nothing downloaded twice


def test_revision_pins_a_commit(hub):
    repo = hub.add("org/tiny", {"config.json": b"{}"})
    old = repo.refs["main"]
    repo.refs["v1"] = old
    repo.commit({"config.json": CONFIG})
    pinned, latest = fetch("hf://org/tiny@v1"), fetch("hf://org/tiny")
    assert Path(pinned.local, "config.json").read_bytes() == b"{}"
    assert Path(latest.local, "config.json").read_bytes() == CONFIG
    assert pinned.record["commit"] == old != latest.record["commit"]
    by_sha = fetch(f"hf://org/tiny@{old}")
    assert by_sha.local == pinned.local


def test_data_paths_default_to_dataset_repos_and_may_name_one_file(hub):
    hub.add("org/dates", {"train.jsonl": b'{"text": "a"}\n', "README.md": b"# card"}, repo_type="dataset")
    one = fetch("hf://org/dates/train.jsonl", "data")
    assert Path(one.local).name == "train.jsonl" and Path(one.local).read_bytes() == b'{"text": "a"}\n'
    assert one.record["repo_type"] == "dataset"
    assert not Path(one.local).with_name("README.md").exists()  # only what was asked for
    explicit = fetch("hf://datasets/org/dates", "model")
    assert Path(explicit.local, "README.md").exists()


def test_gated_repo_needs_the_right_token(hub, monkeypatch, tmp_path):
    hub.add("org/gated", {"config.json": CONFIG}, gated=True)
    with pytest.raises(SourceDenied, match="gated or private") as exc:
        fetch("hf://org/gated")
    assert exc.value.exit_code == ExitCode.SOURCE_DENIED
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(SourceDenied):
        fetch("hf://org/gated")
    monkeypatch.delenv("HF_TOKEN")
    token_file = tmp_path / "token"
    token_file.write_text(hub.token + "\n")  # a mounted Secret ends with a newline more often than not
    monkeypatch.setenv("HF_TOKEN_FILE", str(token_file))
    assert Path(fetch("hf://org/gated").local, "config.json").read_bytes() == CONFIG


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("hf://org/nope", "no such repository"),
        ("hf://org/tiny@v9", "no such revision"),
        ("hf://org/tiny/missing.bin", "no file or folder 'missing.bin'"),
    ],
)
def test_missing_things_are_named(hub, uri, message):
    hub.add("org/tiny", {"config.json": CONFIG})
    with pytest.raises(SourceMissing, match=message) as exc:
        fetch(uri)
    assert exc.value.exit_code == ExitCode.SOURCE_MISSING
    assert uri in str(exc.value) and "\n" not in str(exc.value)


def test_a_cut_download_resumes_from_where_it_stopped(hub):
    # huggingface_hub writes in 10 MiB chunks: cut after more than one, so there is something to resume from.
    big = WEIGHTS * 120  # 12 MiB
    hub.add("org/tiny", {"config.json": CONFIG, "model.safetensors": big})
    hub.cut_next["model.safetensors"] = 11 << 20
    local = fetch("hf://org/tiny").local
    assert Path(local, "model.safetensors").read_bytes() == big
    first, second = hub.gets("model.safetensors")
    assert first is None and second is not None and int(second.removeprefix("bytes=").rstrip("-")) > 0


def test_a_corrupted_cache_entry_is_detected_and_fetched_again(hub):
    hub.add("org/tiny", {"config.json": CONFIG, "model.safetensors": WEIGHTS})
    local = fetch("hf://org/tiny").local
    for name in ("model.safetensors", "config.json"):  # an LFS blob (sha256) and a git blob (sha1)
        blob = Path(blobs_of(local)[name])
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0xFF  # same size, one bit pattern flipped
        blob.write_bytes(bytes(data))
    again = fetch("hf://org/tiny").local
    assert Path(again, "model.safetensors").read_bytes() == WEIGHTS
    assert Path(again, "config.json").read_bytes() == CONFIG
    assert len(hub.gets("model.safetensors")) == 2


def test_an_unreachable_hub_is_a_transfer_error(monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(TransferFailed, match="cannot download from"):
        fetch("hf://org/tiny")


# --- a shared cache and hostile names (issue 22, items 1 and 3) ------------------------------------------


def test_a_regular_file_swapped_into_the_snapshot_is_caught(hub):
    """A co-tenant replaces a snapshot link with a plain file of their own: it is not the hub's file."""
    hub.add("org/tiny", {"config.json": CONFIG, "model.safetensors": WEIGHTS})
    local = Path(fetch("hf://org/tiny").local)
    (local / "config.json").unlink()
    (local / "config.json").write_bytes(b'{"model_type": "evil"}')
    again = Path(fetch("hf://org/tiny").local)
    assert (again / "config.json").read_bytes() == CONFIG


def test_a_link_repointed_at_another_genuine_blob_is_caught(hub):
    """The blob it points to hashes to its own name, but not to what the hub lists for config.json."""
    hub.add("org/tiny", {"config.json": CONFIG, "tokenizer.json": b'{"evil": true}'})
    local = Path(fetch("hf://org/tiny").local)
    other = Path(blobs_of(str(local))["tokenizer.json"])
    (local / "config.json").unlink()
    (local / "config.json").symlink_to(other)
    assert Path(fetch("hf://org/tiny").local, "config.json").read_bytes() == CONFIG


def test_a_file_the_hub_does_not_list_is_removed(hub):
    hub.add("org/tiny", {"config.json": CONFIG})
    local = Path(fetch("hf://org/tiny").local)
    (local / "adapter_config.json").write_text("{}")  # planted: would change what loads
    again = Path(fetch("hf://org/tiny").local)
    assert sorted(p.name for p in again.iterdir()) == ["config.json"]


@pytest.mark.parametrize(
    "uri", ["hf://org/tiny/../../../../escaped", "hf://org/tiny/a/%2E%2E/%2E%2E", "hf://org/tiny@../../x"]
)
def test_a_path_or_revision_that_climbs_out_is_a_config_error(hub, uri):
    from kubetune.api.contract import ExitCode

    hub.add("org/tiny", {"config.json": CONFIG})
    with pytest.raises(Exception) as exc:
        fetch(uri)
    assert getattr(exc.value, "exit_code", None) == ExitCode.CONFIG, exc.value
    assert hub.requests == []  # refused before anything was asked of the hub

"""Parsing remote locations (hf://, s3://, https://) and rejecting bad ones in the config."""

from __future__ import annotations

import pytest

from kubetune.api import ConfigError, load_config
from kubetune.api.remote import is_remote, parse


@pytest.mark.parametrize(
    ("uri", "kind", "expected"),
    [
        ("hf://org/name", "model", ("model", "org/name", None, "")),
        ("hf://org/name@v1.0", "model", ("model", "org/name", "v1.0", "")),
        ("hf://org/name@refs%2Fpr%2F1/sub/f.json", "model", ("model", "org/name", "refs/pr/1", "sub/f.json")),
        ("hf://org/dates", "data", ("dataset", "org/dates", None, "")),
        ("hf://datasets/org/dates@main/train.jsonl", "model", ("dataset", "org/dates", "main", "train.jsonl")),
        ("hf://models/org/m", "data", ("model", "org/m", None, "")),
        ("hf://gpt2@abc", "model", ("model", "gpt2", "abc", "")),
    ],
)
def test_hf_forms(uri, kind, expected):
    r = parse(uri, kind)
    assert (r.repo_type, r.repo_id, r.revision, r.path_in_repo) == expected


def test_s3_and_https_forms():
    r = parse("s3://my-bucket/models/tiny/")
    assert (r.bucket, r.key) == ("my-bucket", "models/tiny/")
    h = parse("https://example.com/d/train.jsonl#sha256=" + "a" * 64)
    assert h.url == "https://example.com/d/train.jsonl" and h.sha256 == "a" * 64
    assert is_remote("s3://b/k") and not is_remote("/data/train.jsonl") and not is_remote("builtin:x")


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("ftp://host/file", "unsupported scheme 'ftp'"),
        ("s3://UPPER/key", "not a valid bucket name"),
        ("hf://", "expected hf://"),
        ("hf://org/na me", "not a valid Hugging Face repo name"),
        ("hf://org/name@", "empty revision"),
        ("https://host/dir/", "must name one file"),
        ("https://host/f#md5=abc", "#sha256="),
    ],
)
def test_bad_urls_say_what_is_wrong(uri, problem):
    with pytest.raises(ValueError, match=problem):
        parse(uri)


def test_config_names_the_field_of_a_bad_url():
    with pytest.raises(ConfigError) as exc:
        load_config("model:\n  path: s3://Bad_Bucket/x\ndata:\n  path: [ftp://h/f]\n", "c.yaml")
    problems = exc.value.problems
    assert any(p.startswith("c.yaml:2: model.path:") and "bucket name" in p for p in problems), problems
    assert any(p.startswith("c.yaml:4: data.path") and "ftp" in p for p in problems), problems


def test_push_to_takes_s3_or_hf_only():
    cfg = load_config(None, environ={"KUBETUNE_OUTPUT__PUSH_TO": "s3://results/run1"})
    assert cfg.output.push_to == "s3://results/run1"
    with pytest.raises(ConfigError, match="pushed to s3:// or hf:// only"):
        load_config(None, environ={"KUBETUNE_OUTPUT__PUSH_TO": "https://host/x.bin"})


def test_report_to_accepts_a_comma_list_and_rejects_unknown_trackers():
    cfg = load_config(None, sets=["training.report_to=tensorboard,mlflow"])
    assert cfg.training.report_to == ["tensorboard", "mlflow"]
    with pytest.raises(ConfigError, match="report_to"):
        load_config(None, sets=["training.report_to=comet"])


@pytest.mark.parametrize(
    "uri",
    [
        "hf://org/name/../../..",
        "hf://org/name/sub/../../../etc",
        "hf://datasets/org/name/./x",
        "hf://org/name/%2E%2E/x",
        "hf://org/name@../../../x",
        "hf://org/name@-rf",
    ],
)
def test_an_hf_path_or_revision_cannot_climb_out_of_the_snapshot(uri):
    with pytest.raises(ValueError, match=r"may not contain|not a valid revision"):
        parse(uri, "data")


def test_plain_hf_paths_and_revisions_still_parse():
    remote = parse("hf://datasets/org/name@refs%2Fpr%2F3/dir/.hidden/train-00.parquet", "data")
    assert remote.revision == "refs/pr/3" and remote.path_in_repo == "dir/.hidden/train-00.parquet"


def test_unpinned_says_what_pin_each_scheme_needs():
    from kubetune.api.remote import unpinned

    assert "#sha256=" in unpinned("https://h/t.jsonl", "data")
    assert "40-hex commit" in unpinned("hf://org/m@main", "model")
    assert "40-hex commit" in unpinned("hf://org/m", "model")
    assert unpinned(f"https://h/t.jsonl#sha256={'0' * 64}", "data") is None
    assert unpinned(f"hf://org/m@{'a' * 40}", "model") is None
    assert unpinned("s3://bucket/m", "model") is None and unpinned("/local/m", "model") is None

"""The one redaction: what each kind of credential looks like after it, and what is kept for debugging."""

from __future__ import annotations

import pytest

from kubetune.api.redact import env_secrets, redact, redact_value


@pytest.mark.parametrize(
    ("text", "kept", "gone"),
    [
        ("https://alice:pw123456@host.example/d/t.jsonl", "https://***@host.example/d/t.jsonl", "pw123456"),
        (
            "s3 presigned https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature=deadbeef99#sha256=ab",
            "https://b.s3.amazonaws.com/k?X-Amz-Credential=***&X-Amz-Signature=***#sha256=ab",
            "deadbeef99",
        ),
        ("mlflow at http://bob:s3cretpw@mlflow:5000: HTTP 500", "http://***@mlflow:5000: HTTP 500", "s3cretpw"),
        ("http://host?sig=abcdef123", "http://host?sig=***", "abcdef123"),
        ("headers: {'Authorization': 'Bearer eyJhbGciOi.x.y'}", "Authorization", "eyJhbGciOi"),
        ("Authorization: Basic dXNlcjpwYXNz", "Authorization: Basic ***", "dXNlcjpwYXNz"),
        ("X-Amz-Security-Token: FwoGZXIvYXdzEXAMPLE", "X-Amz-Security-Token: ***", "FwoGZXIvYXdzEXAMPLE"),
        ('{"token": "xyz123456"}', '{"token": "***"}', "xyz123456"),
        ("key id AKIAIOSFODNN7EXAMPLE refused", "key id *** refused", "AKIAIOSFODNN7EXAMPLE"),
        ("token hf_abcdefghijklmnopqrstu is gated", "token *** is gated", "hf_abcdefghijklmnopqrstu"),
    ],
)
def test_credentials_are_masked_and_the_shape_is_kept(text, kept, gone):
    out = redact(text)
    assert kept in out and gone not in out, out


@pytest.mark.parametrize(
    "text",
    [
        "done: 3 steps, loss 1.2 -> 0.8, 1200 tokens/s; adapter in out/adapter",
        "s3://bucket/models/tiny: no such object",
        "hf://org/name@main/dir/train.jsonl: no such revision",
        "/data/train.jsonl:12: malformed JSON: Expecting value (column 3)",
        "data.max_length: Input should be less than or equal to 1048576",
        "max_new_tokens=64",
    ],
)
def test_ordinary_messages_are_untouched(text):
    assert redact(text) == text


def test_known_secret_values_are_masked_anywhere():
    secrets = env_secrets({"HF_TOKEN": "plainsecret-1", "AWS_SECRET_ACCESS_KEY": " wJalrXUtnFEMI \n", "OTHER": "x"})
    assert secrets == ["plainsecret-1", "wJalrXUtnFEMI"]
    assert redact("got plainsecret-1 and wJalrXUtnFEMI", secrets) == "got *** and ***"
    assert redact("short ab", ["ab"]) == "short ab"  # too short to be a secret: never masks ordinary words


def test_records_are_redacted_all_the_way_down():
    record = {"sources": [{"source": "https://u:pw999999@h/x?Signature=s1"}], "n": 3, "ok": True, "none": None}
    assert redact_value(record) == {
        "sources": [{"source": "https://***@h/x?Signature=***"}],
        "n": 3,
        "ok": True,
        "none": None,
    }


@pytest.mark.parametrize(
    ("url", "credential"),
    [
        ("https://bob:hunter2@files.example/m.tar", True),
        ("https://files.example/t.jsonl?X-Amz-Signature=abc&X-Amz-Credential=k", True),
        ("https://files.example/t.jsonl?sv=2024&sig=abc", True),
        ("https://files.example/t.jsonl?api_key=abc", True),
        ("https://files.example/t.jsonl?download=true&rev=3", False),
        ("https://files.example/t.jsonl#sha256=" + "a" * 64, False),
        ("s3://bucket/prefix", False),
    ],
)
def test_a_url_carries_a_credential_only_in_userinfo_or_a_credential_key(url, credential):
    from kubetune.api.redact import carries_credential

    assert carries_credential(url) is credential


def test_a_structured_value_under_a_credentials_name_is_masked():
    record = {"token": "abc123", "password": "pw", "headers": {"Authorization": "Bearer x"}, "tokens": 512}
    got = redact_value({**record, "model": "org/name", "max_tokens": "16"})
    assert got["token"] == got["password"] == got["headers"]["Authorization"] == "***"
    assert got["tokens"] == 512 and got["model"] == "org/name" and got["max_tokens"] == "16"

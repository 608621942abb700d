"""Shared fixtures. The builtin model is exported once per machine into KUBETUNE_CACHE_DIR (~25 s)."""

from __future__ import annotations

import pytest

pytest_plugins = ["kube"]  # tests/support/kube.py: the emulated API server and the operator runner


@pytest.fixture(scope="session")
def tokenizer():
    from kubetune.trainer.models import load_tokenizer

    return load_tokenizer("builtin:smollm2-135m-instruct")


@pytest.fixture(scope="session")
def builtin_path() -> str:
    from kubetune.trainer.models import resolve_path

    return resolve_path("builtin:smollm2-135m-instruct")

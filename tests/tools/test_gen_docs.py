"""The generated references (docs/reference/) are current, and the generator reports what the models say."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import gen_docs
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from kubetune.api import conditions
from kubetune.api.config import TrainConfig
from kubetune.api.finetunejob import FinetuneJobSpec

ROOT = Path(__file__).resolve().parents[2]


def test_generated_references_are_current():
    for path, text in gen_docs.expected().items():
        assert path.exists(), f"{path.relative_to(ROOT)} is missing: run `make docs`"
        assert path.read_text() == text, f"{path.relative_to(ROOT)} is stale: run `make docs`"


class Inner(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)
    claim_name: str = Field(min_length=1, max_length=9, description="Which | claim.")


class Outer(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)
    mode: Literal["a", "b"] = Field("b", description="A mode.")
    ratio: float = Field(0.5, ge=0.0, lt=1.0)
    steps: int | None = Field(None, ge=1)
    tags: list[str] = Field(default_factory=lambda: ["x"])
    volume: Inner | None = None
    many: list[Inner] = []


def test_rows_carry_keys_types_bounds_defaults_and_descriptions():
    rows = {r.key: r for r in gen_docs.model_rows(Outer, "spec.")}
    assert list(rows) == [
        "spec.mode",
        "spec.ratio",
        "spec.steps",
        "spec.tags",
        "spec.volume",
        "spec.volume.claimName",
        "spec.many",
        "spec.many[].claimName",
    ]
    assert (rows["spec.mode"].type, rows["spec.mode"].default, rows["spec.mode"].description) == (
        "`a` | `b`",
        '`"b"`',
        "A mode.",
    )
    assert rows["spec.ratio"].type == "number, ≥ 0.0, < 1.0"
    assert (rows["spec.steps"].type, rows["spec.steps"].default) == ("integer, ≥ 1", "")
    assert rows["spec.tags"].default == '`["x"]`'  # a default_factory's value, which JSON schema leaves out
    claim = rows["spec.volume.claimName"]
    assert (claim.type, claim.default) == ("string, non-empty, at most 9 characters", "required")
    table = gen_docs.table([claim])
    assert "Which \\| claim." in table  # a `|` in a description would end the cell


def test_every_config_key_is_in_the_config_reference():
    page = gen_docs.config_page()
    keys = [
        f"`{section}.{key}`"
        for section, info in TrainConfig.model_fields.items()
        if isinstance(info.default_factory, type)
        for key in info.default_factory.model_fields
    ]
    assert keys and all(k in page for k in keys), [k for k in keys if k not in page]
    assert "`output_dir`" in page


def test_the_spec_reference_uses_camel_case_and_links_the_training_config():
    page = gen_docs.finetunejob_page()
    assert "`spec.runPolicy.backoffLimit`" in page and "backoff_limit" not in page
    assert "`spec.training`" in page and "(config.md)" in page
    assert "`spec.training.lora.r`" not in page  # documented once, in config.md
    assert len([k for k in FinetuneJobSpec.model_fields]) <= page.count("| `spec.")


def test_values_rows_take_defaults_and_comments_from_values_yaml():
    text = "# The image.\nimage:\n  # Its repository.\n  repository: reg/op\n  tag: ''\n"
    notes = gen_docs.values_comments(text)
    assert notes == {"image": "The image.", "image.repository": "Its repository.", "image.tag": ""}
    assert gen_docs.flatten({"a": {"b": 1}}) == {"a": {"b": 1}, "a.b": 1}


def test_every_condition_type_and_reason_is_in_the_finetunejob_reference():
    page = gen_docs.finetunejob_page()
    names = [*conditions.CONDITION_TYPES, *conditions.REASONS, *conditions.JOB_REASONS, *conditions.POD_WAITING_REASONS]
    missing = [n for n in names if f"| `{n}` |" not in page]
    assert names and not missing, missing

"""The condition types and reasons: what the docs list is what the operator writes."""

from __future__ import annotations

from datetime import UTC, datetime

from kubetune.api import conditions
from kubetune.operator.decide import CONDITION_TYPES, decide
from kubetune.operator.observed import Observed


def test_each_reason_is_one_named_constant_with_its_meaning():
    constants = {v for k, v in vars(conditions).items() if k.isupper() and isinstance(v, str)}
    assert constants == set(conditions.REASONS) | set(conditions.CONDITION_TYPES)
    assert all(meaning.strip() for meaning in (*conditions.REASONS.values(), *conditions.CONDITION_TYPES.values()))
    assert tuple(conditions.CONDITION_TYPES) == CONDITION_TYPES  # status lists conditions in this order


def test_a_reason_the_operator_writes_is_listed():
    meta = {"name": "x", "namespace": "ml", "uid": "u"}
    plan = decide(meta, {"backend": "nope"}, {}, Observed(now=datetime.now(UTC)), settings=None)  # type: ignore[arg-type]
    reasons = {c["reason"] for c in plan.status["conditions"]} | {e.reason for e in plan.events}
    assert reasons == {conditions.INVALID_SPEC} and reasons <= set(conditions.REASONS)

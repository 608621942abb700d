"""Complete-or-absent checkpoints and the rules for resuming from them."""

import json

import pytest

from kubetune.api.config import TrainConfig
from kubetune.trainer.checkpoints import (
    MARKER,
    STAGING,
    clean_incomplete,
    complete_checkpoints,
    identity,
    mismatches,
    rotate,
    select_resume,
)
from kubetune.trainer.errors import UsageError

ID = {"model": "m", "model_fingerprint": "f", "quantization": "none", "lora": {"r": 8}, "data": {"d": "h"}}


def make(root, step, complete=True, identity=ID):
    d = root / f"checkpoint-{step}"
    d.mkdir(parents=True)
    (d / "adapter_model.safetensors").write_bytes(b"x")
    (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))  # as the Trainer writes it
    if complete:
        (d / MARKER).write_text(json.dumps({"step": step, "identity": identity}))
    return d


def test_only_marked_checkpoints_count_in_step_order(tmp_path):
    make(tmp_path, 10)
    make(tmp_path, 2)
    make(tmp_path, 30, complete=False)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-10"]


def test_clean_removes_staging_and_unmarked(tmp_path):
    make(tmp_path, 1)
    make(tmp_path, 2, complete=False)
    (tmp_path / STAGING / "checkpoint-3").mkdir(parents=True)
    removed = {p.name for p in clean_incomplete(tmp_path)}
    assert removed == {"checkpoint-2", STAGING}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-1"]


def test_rotate_keeps_newest(tmp_path):
    for s in (1, 2, 3):
        make(tmp_path, s)
    rotate(tmp_path, keep=2)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-3"]


def test_select_resume_auto_never_and_path(tmp_path):
    assert select_resume(tmp_path, "auto", ID, force=False) is None
    make(tmp_path, 4)
    newest = make(tmp_path, 8)
    make(tmp_path, 12, complete=False)
    assert select_resume(tmp_path, "auto", ID, force=False) == newest
    assert select_resume(tmp_path, "never", ID, force=False) is None
    assert select_resume(tmp_path, str(tmp_path / "checkpoint-4"), ID, force=False).name == "checkpoint-4"
    with pytest.raises(UsageError, match="not a complete kubetune checkpoint"):
        select_resume(tmp_path, str(tmp_path / "checkpoint-12"), ID, force=False)


def test_changed_run_is_refused_unless_forced(tmp_path):
    make(tmp_path, 5)
    changed = {**ID, "lora": {"r": 16}, "data": {"d": "other"}}
    assert mismatches(ID, changed) == ["lora", "data"]
    with pytest.raises(UsageError, match=r"different run \(lora, data changed\)"):
        select_resume(tmp_path, "auto", changed, force=False)
    assert select_resume(tmp_path, "auto", changed, force=True).name == "checkpoint-5"


def test_a_damaged_checkpoint_is_named_not_loaded(tmp_path):
    (make(tmp_path, 2) / "trainer_state.json").write_text("{trunc")
    with pytest.raises(UsageError, match=r"checkpoint-2/trainer_state.json is damaged"):
        select_resume(tmp_path, "auto", ID, force=False)
    (make(tmp_path, 4) / MARKER).write_text("[]")
    with pytest.raises(UsageError, match=r"checkpoint-4/COMPLETE is damaged \(not a JSON object\)"):
        select_resume(tmp_path, "auto", ID, force=False)


def order_of(world_size: int = 1, **sections: dict) -> dict:
    cfg = TrainConfig.model_validate({"model": {"path": "m"}, **sections})
    return identity(cfg, {"d": "h"}, "f", world_size, "fp32")["order"]


def test_the_data_order_is_part_of_a_checkpoints_identity():
    base = order_of(training={"batch_size": 4})
    # Whatever decides which records a step sees: a resume would skip the wrong ones.
    for changed in (
        order_of(training={"batch_size": 4, "seed": 7}),
        order_of(training={"batch_size": 8}),
        order_of(training={"batch_size": 4, "gradient_accumulation": 2}),
        order_of(2, training={"batch_size": 4}),
        order_of(training={"batch_size": 4}, data={"group_by_length": False}),
        order_of(training={"batch_size": 4}, data={"max_length": 256}),
        order_of(training={"batch_size": 4}, data={"eval_split": 0.1}),
    ):
        assert changed != base, changed
    # The same global batch over more processes sees the same records at every step: resumable.
    assert order_of(2, training={"batch_size": 2}) == base
    assert order_of(training={"batch_size": 2, "gradient_accumulation": 2}) == base
    # Packing has no padding to save, so grouping by length is off whatever the setting says.
    assert order_of(data={"packing": True})["group_by_length"] is False


def test_a_checkpoint_of_another_data_order_is_refused_by_name(tmp_path):
    written = {**ID, "order": order_of(training={"batch_size": 4})}
    make(tmp_path, 5, identity=written)
    with pytest.raises(UsageError, match=r"different run \(order changed\)"):
        select_resume(tmp_path, "auto", {**ID, "order": order_of(training={"batch_size": 8})}, force=False)
    assert select_resume(tmp_path, "auto", {**ID, "order": order_of(2, training={"batch_size": 2})}, force=False)


def test_a_checkpoint_written_in_another_precision_is_refused_by_name(tmp_path):
    cfg = TrainConfig.model_validate({"model": {"path": "m"}})
    fp32, bf16 = (identity(cfg, {"d": "h"}, "f", 1, p) for p in ("fp32", "bf16"))
    make(tmp_path, 3, identity=fp32)
    assert select_resume(tmp_path, "auto", fp32, force=False)
    # `precision: auto` is a timing probe's verdict: if it flips between runs, the resume must not go on quietly.
    with pytest.raises(UsageError, match=r"different run \(precision changed\)"):
        select_resume(tmp_path, "auto", bf16, force=False)
    # A checkpoint written before the precision was recorded does not say: it resumes (the order rule still holds).
    older = {k: v for k, v in fp32.items() if k != "precision"}
    make(tmp_path, 4, identity=older)
    assert select_resume(tmp_path, "auto", bf16, force=False).name == "checkpoint-4"

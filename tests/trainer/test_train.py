"""The pure parts of train.py: mapping our config onto TrainingArguments, and worker checks."""

import pytest

from kubetune.api import load_config
from kubetune.trainer.device import Hardware, choose
from kubetune.trainer.errors import UsageError
from kubetune.trainer.train import lora_config, training_arguments, worker_setup


def test_training_arguments_mapping(tmp_path):
    cfg = load_config(
        None,
        sets=[f"output_dir={tmp_path}", "training.max_steps=7", "training.gradient_accumulation=3",
              "training.eval_steps=5", "training.scheduler=linear", "distributed.timeout_seconds=42"],
    )  # fmt: skip
    # (a backend needs a live process group to construct: the 2-process test covers it)
    args = training_arguments(cfg, choose(Hardware(usable_cores=2)), has_eval=True, no_bar=True)
    assert args.output_dir == str(tmp_path / "checkpoints")
    assert (args.max_steps, args.gradient_accumulation_steps, args.per_device_train_batch_size) == (7, 3, 8)
    assert (args.eval_strategy, args.eval_steps) == ("steps", 5)
    assert (args.bf16, args.fp16, args.use_cpu, args.disable_tqdm) == (False, False, True, True)
    assert (args.ddp_backend, args.ddp_timeout, args.ddp_find_unused_parameters) == (None, 42, False)
    assert args.lr_scheduler_type == "linear"
    no_eval = training_arguments(cfg, choose(Hardware()), has_eval=False, no_bar=False)
    assert no_eval.eval_strategy == "no"


def test_lora_config_mapping():
    cfg = load_config(None, sets=["lora.r=4", "lora.alpha=8", "lora.target_modules=q_proj,v_proj"])
    lc = lora_config(cfg)
    assert (lc.r, lc.lora_alpha, set(lc.target_modules)) == (4, 8, {"q_proj", "v_proj"})


def test_world_size_mismatch_is_named(monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")  # as in a torchrun worker
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("KUBETUNE_NPROC_PER_NODE", "2")
    monkeypatch.setenv("KUBETUNE_NNODES", "1")
    with pytest.raises(UsageError, match=r"1 x 2 = 2 processes, but the job has 3"):
        worker_setup(load_config(None), choose(Hardware()))

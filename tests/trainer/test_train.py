"""The pure parts of train.py: mapping our config onto TrainingArguments, and worker checks."""

import json
import os
import subprocess
import sys

import pytest
from cores import on_run_cpus, run_cpus
from mlflowserver import free_port
from precision_modes import child_env

from kubetune.api import load_config
from kubetune.trainer.device import Hardware, choose
from kubetune.trainer.errors import UsageError
from kubetune.trainer.train import lora_config, training_arguments, worker_setup


def test_training_arguments_mapping(tmp_path):
    cfg = load_config(
        None,
        sets=[
            f"output_dir={tmp_path}",
            "training.max_steps=7",
            "training.gradient_accumulation=3",
            "training.eval_steps=5",
            "training.scheduler=linear",
            "distributed.timeout_seconds=42",
        ],
    )
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


def _fitted(global_step=4, epoch=1.0, tokens=1000, start_tokens=200, seconds=8.0, training_loss=0.7, eval_loss=0.5):
    from types import SimpleNamespace

    from kubetune.trainer.selection import BestAdapter
    from kubetune.trainer.train import Fitted

    state = SimpleNamespace(global_step=global_step, epoch=epoch, num_input_tokens_seen=tokens)
    return Fitted(
        trainer=SimpleNamespace(state=state),
        result=SimpleNamespace(training_loss=training_loss),
        reporter=SimpleNamespace(start_tokens=start_tokens),
        train_seconds=seconds,
        eval_loss=eval_loss,
        best=BestAdapter("loss"),
    )


def test_summary_takes_losses_from_progress_events_and_rates_this_session_only(tmp_path):
    from kubetune.api.contract import SummaryEvent
    from kubetune.trainer.train import summarize

    metrics = [
        {"event": "progress", "step": 1, "loss": 2.0},
        {"event": "eval", "step": 2, "eval_loss": 9.0},
        {"event": "progress", "step": 2, "loss": None},
        {"event": "progress", "step": 4, "loss": 0.5},
    ]
    summary = summarize(_fitted(), metrics, tmp_path / "adapter", load_seconds=1.234, total_seconds=12.0)
    assert SummaryEvent.model_validate(summary).event == "summary"  # the operator's parser accepts it
    assert (summary["first_loss"], summary["final_loss"], summary["eval_loss"]) == (2.0, 0.5, 0.5)
    assert summary["tokens_per_second"] == (1000 - 200) / 8.0  # a resumed run's earlier tokens do not count
    assert summary["load_seconds"] == 1.23 and summary["adapter_path"] == str(tmp_path / "adapter")


def test_summary_of_a_run_with_no_finite_loss_has_nulls_not_nan(tmp_path):
    from kubetune.trainer.train import summarize

    summary = summarize(_fitted(training_loss=float("nan"), seconds=0.0), [], tmp_path, 0.0, 0.0)
    assert summary["train_loss"] is None and summary["first_loss"] is None and summary["tokens_per_second"] is None


AGREE_SCRIPT = """
import json, sys
from kubetune.trainer.device import Hardware, choose
from kubetune.trainer.train import agree_across_ranks
speedup, backend = float(sys.argv[1]), sys.argv[2]  # what this rank's bf16 probe measured; the job's backend
place = agree_across_ranks(choose(Hardware(cpu_flags=frozenset({"avx512_bf16"}), bf16_speedup=speedup)), backend, 60)
print(json.dumps({"precision": place.precision, "reason": place.reason}))
"""


# "cpu:gloo" stands in for nccl/ccl here: any backend but plain gloo agrees over a gloo group of its own.
@pytest.mark.parametrize("backend", ["gloo", "cpu:gloo"])
def test_ranks_whose_probes_disagree_train_in_one_precision(backend):
    """Two real gloo ranks: one probe says bf16, the other fp32; both must come out fp32.

    The bug this guards: each rank chose on its own and DDP's first all-reduce aborted on
    buffers of different sizes (bf16 vs fp32 gradients).
    """
    import json
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2"}
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", AGREE_SCRIPT, speedup, backend],
            env={**base, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank, speedup in enumerate(["1.1", "0.5"])
    ]
    results = []
    for proc in ranks:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert [r["precision"] for r in results] == ["fp32", "fp32"]
    assert all("1 rank(s) bf16, 1 rank(s) fp32" in r["reason"] for r in results)


WORKER = """
import json, os, torch
from kubetune.api import load_config
from kubetune.trainer.device import choose, detect
from kubetune.trainer.train import worker_setup
cfg = load_config(None, sets=["training.num_threads=1", "training.precision=fp32"])
place, backend = worker_setup(cfg, choose(detect(), "cpu", "fp32", "auto", False, 1))
cores = sorted(os.sched_getaffinity(0))
print(json.dumps({"threads": place.threads, "torch": torch.get_num_threads(), "cores": cores}))
"""


@pytest.mark.skipif(len(run_cpus()) < 2, reason="needs two usable cores to tell one thread from all")
def test_a_launched_worker_runs_the_threads_the_config_asks_for(tmp_path):
    """A torchrun worker (world size 1, gloo) told `training.num_threads: 1` on a multi-core node uses one thread,
    and says so; before, it ran as many threads as its block has cores (two launchers on 2 shared cores: 1.5x
    slower). It stays pinned to its whole block: pinned to the block's first core, two such launchers on one host
    were both on core 0 (the two-node flow: ~160 tokens/s, against ~275 with the block)."""
    worker_env = {"TORCHELASTIC_RUN_ID": "t", "WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}
    env = child_env(**worker_env, LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    # On all the run's cores, even in a pinned xdist worker (tests/conftest.py).
    done = subprocess.run(
        [sys.executable, "-c", WORKER], env=env, capture_output=True, text=True, timeout=120, preexec_fn=on_run_cpus
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["threads"] == got["torch"] == 1 and got["cores"] == run_cpus(), got

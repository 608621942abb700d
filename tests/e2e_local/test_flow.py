"""The whole flow on a local node: FinetuneJob -> operator -> Jobs -> trainer containers -> merge.

The seams under test: the operator's pod template against the trainer's entrypoint and env contract
(mounts at /model, /data, /output, /config; MASTER_ADDR through the headless Service's hostnames;
the termination log), real rendezvous between worker processes, progress flowing from real logs into
status, SIGTERM -> checkpoint -> exit 75 -> a new pod that resumes. Each pod runs in a real container from
the image its Job names, where an engine works and the images are built (else as a host process; the test
output says which). tests/support/localnode.py says what the local node does and does not emulate.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import precision_modes
import pytest
from kube import Cluster, events_seen, eventually, operator
from localnode import LocalNode, available, dump, mode
from operatorpod import OperatorPod, operator_container

from kubetune.operator.render import Names

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(available() is not None, reason=str(available())),
]
ROOT = Path(__file__).resolve().parents[2]
# Waits are generous: each pod is a container that starts Python and torch, on 2 cores shared with other jobs.


def finetunejob(
    name: str,
    max_steps: int,
    nodes: int = 1,
    merge: bool = True,
    data: str = "train.jsonl",
    threads: int | None = None,
    **spec: Any,
) -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FinetuneJob",
        "metadata": {"name": name},
        "spec": {
            "nodes": nodes,
            "storage": {
                "model": {"claimName": "models"},
                "data": {"claimName": "data"},
                "output": {"claimName": "runs", "subPath": name},
            },
            "training": {
                "data": {"path": [data], "max_length": 64},
                "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
                "training": {
                    "max_steps": max_steps,
                    "batch_size": 2,
                    "logging_steps": 1,
                    "save_steps": 2,
                    "lr": 0.001,
                    "num_threads": threads,
                    **precision_modes.forced_training(),  # KUBETUNE_TRAINING__PRECISION, if the suite forces it
                },
            },
            "merge": {"enabled": merge},
            **spec,
        },
    }


class Watcher:
    """Polls a FinetuneJob's status, keeping every progress step and phase it saw."""

    def __init__(self, cluster: Cluster, name: str):
        self.cluster, self.name = cluster, name
        self.steps: list[int] = []
        self.phases: list[str] = []

    async def status(self) -> dict[str, Any]:
        obj = await self.cluster.get("FinetuneJob", self.name)
        status = (obj or {}).get("status") or {}
        step = (status.get("progress") or {}).get("step")
        if step is not None and (not self.steps or self.steps[-1] != step):
            self.steps.append(step)
        if status.get("phase") and (not self.phases or self.phases[-1] != status["phase"]):
            self.phases.append(status["phase"])
        return status

    async def phase(self, phase: str, node: LocalNode, timeout: float = 600) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            status = await self.status()
            if status.get("phase") == "Failed" and phase != "Failed":
                raise AssertionError(f"{self.name} failed: {status.get('message')}\n{dump(node)}")
            return status if status.get("phase") == phase else None

        try:
            return await eventually(probe, timeout=timeout, what=f"{self.name} {phase}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{dump(node)}") from None

    async def step_at_least(self, step: int, node: LocalNode, timeout: float = 420) -> None:
        async def probe() -> bool:
            await self.status()
            return bool(self.steps) and self.steps[-1] >= step

        try:
            await eventually(probe, timeout=timeout, what=f"{self.name} step {step}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{dump(node)}") from None


def log_step(node: LocalNode, pod: str) -> int:
    """The newest progress step in a pod's log (what a person tailing it would see)."""
    steps = [
        json.loads(x)["step"]
        for x in node.cluster.logs.get(pod, "").splitlines()
        if x.startswith('{"event": "progress"')
    ]
    return steps[-1] if steps else 0


def first_step(node: LocalNode, pod: str) -> int:
    lines = node.cluster.logs.get(pod, "").splitlines()
    steps = [json.loads(x)["step"] for x in lines if x.startswith('{"event": "progress"')]
    return steps[0] if steps else 0


def worker_pods(node: LocalNode, job: str) -> list[str]:
    return [c.pod for c in node.containers.values() if c.job == job]


async def test_one_node_through_an_operator_restart_a_suspension_a_preemption_and_an_eviction(
    cluster: Cluster, claims: dict[str, Path], tmp_path: Path
):
    """One run meets, in turn, what interrupts training on a real cluster, and ends as if nothing had: the
    operator restarts (the new one adopts everything); the job is suspended and resumed (SIGTERM, a checkpoint,
    exit 75); its pod is deleted (a preemption: SIGTERM, then the Job makes a new pod); the next pod is evicted
    hard (DisruptionTarget, SIGKILL at once: no checkpoint, exit 137). With backoffLimit 0, only the Job's
    podFailurePolicy rules (exit 75 and DisruptionTarget: Ignore) keep these from failing it. Each new pod resumes
    from the last checkpoint."""
    name, names = "dates", Names.of("dates")
    watch = Watcher(cluster, name)
    async with LocalNode(cluster, claims, tmp_path / "node") as node:
        async with operator():
            await cluster.create(finetunejob(name, max_steps=24, runPolicy={"backoffLimit": 0}))
            # After the preflight initializer (a plan on the real model: a minute or more on a loaded machine).
            await watch.step_at_least(2, node)
        # The operator is gone for a moment; training goes on. A new operator adopts everything.
        async with operator():
            await watch.step_at_least(watch.steps[-1] + 2, node)
            await cluster.patch("FinetuneJob", name, {"spec": {"runPolicy": {"suspend": True}}})
            await watch.phase("Suspended", node)
            await eventually(lambda: _exited(node, names.workers), timeout=180, what="the worker stopped")
            assert node.exits(names.workers) == [75], dump(node)  # SIGTERM -> checkpoint -> retryable exit

            async def settled() -> bool:
                return "checkpoints are kept" in (await watch.status()).get("message", "")

            await eventually(settled, timeout=60, what="Suspended with no worker left")
            first = worker_pods(node, names.workers)[0]
            await cluster.patch("FinetuneJob", name, {"spec": {"runPolicy": {"suspend": False}}})
            resumed = await eventually(lambda: _pod_after(node, names.workers, first), timeout=120, what="a new pod")
            await eventually(lambda: _past_a_checkpoint(node, resumed), timeout=420, what="a checkpoint after resume")
            await cluster.delete("Pod", resumed)  # a preemption
            replaced = await eventually(lambda: _pod_after(node, names.workers, resumed), timeout=120, what="a pod")
            await eventually(lambda: _past_a_checkpoint(node, replaced), timeout=420, what="a checkpoint by it")
            await node.evict(replaced, reason="TerminationByKubelet", grace=0)
            done = await watch.phase("Succeeded", node)
            job = await cluster.get("Job", names.workers)
            await events_seen(cluster, "Created", "Running", "Suspended", "Resumed", "TrainingSucceeded", "Succeeded")
    assert node.exits(names.workers) == [75, 75, 137, 0], dump(node)
    pods = worker_pods(node, names.workers)
    starts = [first_step(node, p) for p in pods]
    assert starts[0] <= 1 and starts[1] > 1 and starts[2] > starts[1] and starts[3] > starts[2], (starts, dump(node))
    assert job["status"].get("failed", 0) == 0  # exit 75 and the disruption were ignored: backoffLimit 0 untouched
    out = claims["runs"] / name
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "merged" / "config.json").is_file()
    assert json.loads((out / "run.json").read_text())["resumed_from"], "the last pod started from a checkpoint"
    assert done["adapterPath"] == f"pvc://runs/{name}/adapter" and done["mergedPath"] == f"pvc://runs/{name}/merged"
    assert done["restarts"] == 3 and done["progress"]["step"] == 24
    assert len(set(watch.steps)) >= 3, watch.steps  # progress was seen to advance during the run
    # The preflight initializer, the workers, the merge: one each, whatever the operator restart and the resumes.
    assert cluster.requests("post", "Job") == 3 and cluster.requests("post", "ConfigMap") == 1


async def _exited(node: LocalNode, job: str) -> bool:
    return bool(node.exits(job))


async def test_two_nodes_rendezvous_train_suspend_resume_and_merge(
    cluster: Cluster, claims: dict[str, Path], tmp_path: Path
):
    name, names = "dates2", Names.of("dates2")
    watch = Watcher(cluster, name)
    async with LocalNode(cluster, claims, tmp_path / "node") as node, operator_in_its_image() as pod:
        # Two pods on a 2-core machine: one thread each, or they fight over the cores. 24 steps: the suspension
        # below (status shows step 3, the operator suspends the Job, the pods get SIGTERM) must land while they
        # train; with 8 the pair once finished first (~0.7 s a step) and once in the last step.
        await cluster.create(finetunejob(name, max_steps=24, nodes=2, threads=1))
        await watch.step_at_least(3, node)
        # Suspended mid-training: both nodes' launchers stop on rank 0's checkpoint with 75 (issue 21 #3), so
        # neither index counts as complete and the resumed pair meets again at the rendezvous.
        await cluster.patch("FinetuneJob", name, {"spec": {"runPolicy": {"suspend": True}}})
        await watch.phase("Suspended", node)
        try:
            await eventually(lambda: _exited_n(node, names.workers, 2), timeout=240, what="both workers stopped")
        except AssertionError as exc:
            raise AssertionError(f"{exc} (steps seen {watch.steps})\n{dump(node)}") from None
        seen_before = len(watch.steps)
        assert sorted(node.exits(names.workers)) == [75, 75], dump(node)
        await cluster.patch("FinetuneJob", name, {"spec": {"runPolicy": {"suspend": False}}})
        done = await watch.phase("Succeeded", node, timeout=600)
        await events_seen(cluster, "Created", "Running", "Suspended", "Resumed", "Succeeded")
        if pod is not None:
            await _serves(pod)
    assert sorted(node.exits(names.workers)) == [0, 0, 75, 75] and node.exits(names.merge) == [0], dump(node)
    pods = worker_pods(node, names.workers)
    logs = "".join(node.cluster.logs[p] for p in pods)
    assert "launching 1 process(es) on node 1 of 2 (world size 2)" in logs, dump(node)
    # The resumed pair went on from a checkpoint (step 3 or later was reached before the suspension, save_steps is
    # 2): the first step the resumed rank 0 logs, and every step status showed after it, are past step 2.
    resumed = [first_step(node, p) for p in pods[2:] if first_step(node, p)]
    assert resumed and min(resumed) >= 3, (resumed, dump(node))
    assert min(watch.steps[seen_before:]) >= 3, watch.steps
    out = claims["runs"] / name
    assert (out / "merged" / "config.json").is_file()
    run = json.loads((out / "run.json").read_text())
    assert run["resolved"]["world_size"] == 2 and run["resumed_from"], run.get("resumed_from")
    assert done["progress"]["step"] == 24 and done["restarts"] == 2, done
    assert done["adapterPath"] == f"pvc://runs/{name}/adapter" and done["mergedPath"] == f"pvc://runs/{name}/merged"
    assert len(set(watch.steps)) >= 3, watch.steps  # progress was seen to advance


async def _exited_n(node: LocalNode, job: str, n: int) -> bool:
    return len(node.exits(job)) >= n


@contextlib.asynccontextmanager
async def operator_in_its_image() -> AsyncIterator[OperatorPod | None]:
    """The operator in its own container where pods are containers; else in this process (kopf's runner)."""
    if mode() != "container":
        async with operator():
            yield None
        return
    async with operator_container(Path(os.environ["KUBECONFIG"])) as pod:
        try:
            yield pod
        except BaseException:
            print(f"--- operator container log ---\n{pod.log[-5000:]}")
            raise


async def _serves(pod: OperatorPod) -> None:
    """The operator's liveness and Prometheus endpoints answer from inside its container."""
    async with aiohttp.ClientSession() as http:
        async with http.get(pod.health_url) as r:
            assert r.status == 200, await r.text()
        async with http.get(pod.metrics_url) as r:
            assert r.status == 200 and "kubetune_" in await r.text(), pod.log[-3000:]


async def _pod_after(node: LocalNode, job: str, pod: str) -> str | None:
    later = [c.pod for c in node.containers.values() if c.job == job and c.pod != pod and c.exit_code is None]
    return later[0] if later else None


async def _past_a_checkpoint(node: LocalNode, pod: str) -> bool:
    """The pod has trained past a save_steps (2) checkpoint of its own since it resumed."""
    return log_step(node, pod) >= first_step(node, pod) + 2


async def test_a_bad_dataset_fails_with_the_trainers_message(cluster: Cluster, claims: dict[str, Path], tmp_path: Path):
    name, names = "bad", Names.of("bad")
    watch = Watcher(cluster, name)
    async with LocalNode(cluster, claims, tmp_path / "node") as node, operator():
        await cluster.create(finetunejob(name, max_steps=4, data="bad.jsonl", runPolicy={"backoffLimit": 1}))
        failed = await watch.phase("Failed", node, timeout=420)
    # The preflight initializer reads the data before any worker: exit 3 (bad data) is permanent, its Job's FailJob
    # rule ends it at once (backoffLimit unused), and no worker starts.
    assert node.exits(names.initializer) == [3] and node.exits(names.workers) == [], dump(node)
    condition = next(c for c in failed["conditions"] if c["type"] == "Failed")
    assert condition["reason"] == "InvalidData", condition
    assert "/data/bad.jsonl:6" in condition["message"] and "completion" in condition["message"], condition
    assert not (claims["runs"] / name / "adapter").exists()
    shutil.rmtree(claims["runs"] / name, ignore_errors=True)


# --- remote sources and push_to: no claim for the model or the data, the result in S3 ------------------------
# (s3_store: the one moto server of the session, tests/conftest.py)


@pytest.fixture
def store(
    s3_store: Any, tmp_path_factory: pytest.TempPathFactory, builtin_path: str
) -> Iterator[tuple[Any, Any, str, Any]]:
    """A fresh bucket holding a tiny model, and a file server with the data at /dates/train.jsonl:
    (store, client, bucket, file server)."""
    from fileserver import FileServer
    from tinymodel import save_tiny_llama

    files = FileServer()
    try:
        client, bucket = s3_store.client(), f"kubetune-e2e-{uuid.uuid4().hex[:8]}"
        client.create_bucket(Bucket=bucket)
        model = save_tiny_llama(tmp_path_factory.mktemp("tiny-model"), builtin_path)
        for f in sorted(p for p in model.rglob("*") if p.is_file()):
            client.upload_file(str(f), bucket, f"models/tiny/{f.relative_to(model).as_posix()}")
        records = (ROOT / "examples" / "data" / "dates" / "train.jsonl").read_text().splitlines()[:32]
        files.files["/dates/train.jsonl"] = ("\n".join(records) + "\n").encode()
        yield s3_store, client, bucket, files
    finally:
        files.stop()


def remote_finetunejob(name: str, model: str, data: str, push_to: str) -> dict[str, Any]:
    ftj = finetunejob(name, max_steps=4, sources={"cache": {"claimName": "cache"}, "s3CredentialsSecret": "s3"})
    ftj["spec"]["storage"] = {"output": {"claimName": "runs", "subPath": name}}
    training = ftj["spec"]["training"]
    training["model"] = {"path": model}
    training["data"]["path"] = [data]
    training["training"]["precision"] = "fp32"  # the same numbers on AVX2-only and AVX512-BF16 machines
    training["output"] = {"push_to": push_to}
    return ftj


async def s3_secret(cluster: Cluster, env: dict[str, str]) -> None:
    data = {k: base64.b64encode(v.encode()).decode() for k, v in env.items()}
    await cluster.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3"}, "data": data})


@pytest.fixture
def remote_claims(tmp_path: Path) -> dict[str, Path]:
    """Only the output claim and the cache: the model and the data come from S3 and HTTP."""
    claims = {"runs": tmp_path / "claims" / "runs", "cache": tmp_path / "claims" / "cache"}
    for path in claims.values():
        path.mkdir(parents=True)
        path.chmod(0o777)  # the pods' user (10001) writes both
    for p in (tmp_path, tmp_path / "claims"):
        p.chmod(0o755)
    return claims


async def test_remote_model_and_data_are_fetched_once_and_the_result_is_pushed_to_s3(
    cluster: Cluster, store: tuple[Any, Any, str, Any], remote_claims: dict[str, Path], tmp_path: Path
):
    s3, client, bucket, files = store
    data_url = f"{files.url}/dates/train.jsonl"
    name, names = "remote", Names.of("remote")
    target = f"s3://{bucket}/results/{name}"
    watch = Watcher(cluster, name)
    async with LocalNode(cluster, remote_claims, tmp_path / "node") as node:
        await s3_secret(cluster, s3.env())
        async with operator():
            ftj = remote_finetunejob(name, f"s3://{bucket}/models/tiny", data_url, target)
            ftj["spec"]["training"]["output"]["export"] = {"gguf": ["q8_0"]}  # the merge Job exports too
            await cluster.create(ftj)
            done = await watch.phase("Succeeded", node, timeout=600)
            await events_seen(cluster, "Initializing", "Created", "Running", "TrainingSucceeded", "Succeeded")
    init = Names.of(name).initializer
    jobs = [h["job"] for h in node.history]
    assert jobs == [init, names.workers, names.merge], dump(node)  # the fetch first, then train, then merge
    assert node.exits(init) == [0] and node.exits(names.workers) == [0] and node.exits(names.merge) == [0]
    assert done["resultLocation"] == target and done["progress"]["step"] == 4
    pushed = json.loads(client.get_object(Bucket=bucket, Key=f"results/{name}/kubetune-push.json")["Body"].read())
    assert {"run.json", "adapter/adapter_model.safetensors", "merged/config.json"} <= set(pushed["files"])
    for rel in ("adapter/adapter_model.safetensors", "merged/config.json", "run.json"):
        client.head_object(Bucket=bucket, Key=f"results/{name}/{rel}")  # the objects really are there
    # output.export: the merge Job left a verified GGUF and its Modelfile in the output, pushed under gguf/.
    gguf = remote_claims["runs"] / name / "gguf"
    assert {"gguf/model-q8_0.gguf", "gguf/model-q8_0.Modelfile", "gguf/export.json"} <= set(pushed["files"])
    pushed_gguf = tmp_path / "pushed-q8_0.gguf"
    client.download_file(bucket, f"results/{name}/gguf/model-q8_0.gguf", str(pushed_gguf))
    assert pushed_gguf.read_bytes() == (gguf / "model-q8_0.gguf").read_bytes()
    assert (gguf / "model-q8_0.Modelfile").is_file()
    # Loaded in llama.cpp, the pushed file predicts like the merged model in transformers: the same top tokens
    # (a random tiny model's are near-ties, so the top-10 as a set) with the same log-probabilities.
    cpp = _next_token_logprobs_in_llamacpp(pushed_gguf)
    hf = _next_token_logprobs_in_transformers(remote_claims["runs"] / name / "merged")
    assert set(cpp) <= set(hf.topk(20).indices.tolist()), (cpp, hf.topk(20))
    assert max(abs(lp - float(hf[i])) for i, lp in cpp.items()) < 0.01, cpp
    run = json.loads((remote_claims["runs"] / name / "run.json").read_text())
    assert run["export"]["files"]["q8_0"]["verified"] is True
    assert {s["source"] for s in run["sources"]} == {f"s3://{bucket}/models/tiny", data_url}
    # The workers asked no source: they read the initializer's lock (the run's uid) from a read-only cache.
    assert all(s.get("locked") is True for s in run["sources"]), run["sources"]
    # The workers and the merge found everything in the cache the initializer filled: the data was downloaded once.
    assert len(list((remote_claims["cache"] / "sources").glob("*/*/manifest.json"))) == 2
    assert [r for r in files.ranges if r[0] == "/dates/train.jsonl"] == [("/dates/train.jsonl", None)], files.ranges


PROMPT = "What is 2031, March 9 in ISO 8601 format?"


def _next_token_logprobs_in_llamacpp(path: Path) -> dict[int, float]:
    """The GGUF loaded in llama.cpp itself (xllamacpp, the export extra): its top-10 next tokens after PROMPT."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(path)
    params.n_ctx = 128
    params.warmup = False
    params.verbosity = -1
    server = xllamacpp.Server(params)
    try:
        reply = server.handle_completions({"prompt": PROMPT, "n_predict": 1, "temperature": 0.0, "n_probs": 10})
    finally:
        del server
    return {int(t["id"]): float(t["logprob"]) for t in reply["choices"][0]["logprobs"]["content"][0]["top_logprobs"]}


def _next_token_logprobs_in_transformers(merged: Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(merged)
    ids = tok(PROMPT, return_tensors="pt").input_ids  # llama.cpp adds BOS where this tokenizer does
    with torch.no_grad():
        return torch.log_softmax(AutoModelForCausalLM.from_pretrained(merged).eval()(input_ids=ids).logits[0, -1], -1)


async def test_a_missing_source_fails_the_job_with_the_trainers_message(
    cluster: Cluster, store: tuple[Any, Any, str, Any], remote_claims: dict[str, Path], tmp_path: Path
):
    s3, _, bucket, files = store
    data_url = f"{files.url}/dates/train.jsonl"
    name = "missing"
    watch = Watcher(cluster, name)
    async with LocalNode(cluster, remote_claims, tmp_path / "node") as node:
        await s3_secret(cluster, s3.env())
        async with operator():
            await cluster.create(
                remote_finetunejob(name, f"s3://{bucket}/models/nothing-here", data_url, f"s3://{bucket}/r")
            )
            failed = await watch.phase("Failed", node, timeout=300)
    init = Names.of(name).initializer
    assert node.exits(init) == [10], dump(node)  # SOURCE_MISSING is permanent: one pod, no retry
    assert [h["job"] for h in node.history] == [init], "no worker started"
    condition = next(c for c in failed["conditions"] if c["type"] == "Failed")
    assert condition["reason"] == "SourceNotFound"
    assert f"s3://{bucket}/models/nothing-here" in failed["message"] and failed["message"] == condition["message"]
    assert "\n" not in failed["message"] and "Traceback" not in failed["message"]


async def test_a_namespaced_install_with_the_charts_metrics_service_trains(
    cluster: Cluster, claims: dict[str, Path], tmp_path: Path
):
    # Namespaced mode puts the chart's kubetune-metrics Service in the jobs' namespace: the kubelet would inject
    # KUBETUNE_METRICS_PORT & co. into every pod, and the trainer read them as config keys (exit 2, issue 21).
    from kube import chart_objects

    (service,) = [o for o in chart_objects({"watch": {"namespaced": True}}, namespace="ml") if o["kind"] == "Service"]
    await cluster.create(service)
    name = "dates-ns"
    watch = Watcher(cluster, name)
    async with LocalNode(cluster, claims, tmp_path / "node") as node, operator():
        await cluster.create(finetunejob(name, max_steps=2, merge=False))
        done = await watch.phase("Succeeded", node)
    assert done["progress"]["step"] == 2, dump(node)


async def test_a_job_whose_image_is_not_there_stays_pending_with_the_reason(
    cluster: Cluster, claims: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    if mode() != "container":
        pytest.skip("process mode runs the entrypoint, not an image")
    allow = {"KUBETUNE_ALLOWED_IMAGES": "localhost/kubetune/*"}  # the policy admits it: the node has no such image
    monkeypatch.setenv("KUBETUNE_ALLOWED_IMAGES", allow["KUBETUNE_ALLOWED_IMAGES"])
    name = "dates-noimage"
    async with LocalNode(cluster, claims, tmp_path / "node"), operator(env=allow):
        await cluster.create(finetunejob(name, max_steps=2, image="localhost/kubetune/trainer:does-not-exist"))

        async def waiting() -> dict[str, Any] | None:
            obj = await cluster.get("FinetuneJob", name)
            status = (obj or {}).get("status") or {}
            return status if "ImagePullBackOff" in status.get("message", "") else None

        status = await eventually(waiting, timeout=120, what="ImagePullBackOff in status.message")
    # Every run starts with the preflight initializer, in the same image: it is the pod that waits, before any worker.
    assert status["phase"] == "Initializing", status
    running = next(c for c in status["conditions"] if c["type"] == "Running")
    assert running["status"] == "False" and running["reason"] == "ImagePullBackOff", running
    assert f"initializer pod {Names.of(name).initializer}-" in status["message"], status["message"]
    assert "localhost/kubetune/trainer:does-not-exist" in status["message"]

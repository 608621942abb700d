"""`kubetune export` (and `output.export` in `kubetune merge`): the merged model as GGUF files that llama.cpp and
Ollama run, each checked in llama.cpp against the merged model before it is kept.

Per type (f16, bf16, q8_0): the file is written under a hidden temporary name
in the destination directory, loaded in llama.cpp and compared with the merged
model in transformers on the same prompts (verify.py); only a file that passes
is renamed to its final name, with its Ollama Modelfile next to it. A failed
check removes the temporary file, so nothing is ever left under a final name
that did not pass; the figures go to export.json either way, and into the
error. An unsupported architecture is refused before anything is loaded.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from kubetune.api.config import DataSection, GgufType
from kubetune.trainer import outlock
from kubetune.trainer.data.loaders import BadRecord
from kubetune.trainer.data.pipeline import load_examples, raise_bad_records
from kubetune.trainer.data.render import adds_bos, encode_prompt, resolve_template
from kubetune.trainer.errors import DataError, ModelError, UsageError
from kubetune.trainer.export import ollama, verify, writer
from kubetune.trainer.generate import split_reference
from kubetune.trainer.models import first_line
from kubetune.trainer.report import write_json_atomic
from kubetune.trainer.runinfo import load_run

log = logging.getLogger("kubetune.export")
REPORT = "export.json"
# Asked when there are no held-out records to ask: short, varied, answerable by any instruct model.
PROBES = (
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "What is 12 plus 30?",
    "Name three colours.",
)
PROBE_NEW_TOKENS = 24
MAX_NEW_TOKENS = 64


def file_name(kind: str) -> str:
    return f"model-{kind}.gguf"


def _merged_config(merged: Path) -> tuple[Any, dict[str, Any]]:
    from transformers import AutoConfig

    if not (merged / "config.json").is_file():
        raise ModelError(f"{merged}: no merged model here (config.json missing); run `kubetune merge` first")
    try:
        config = AutoConfig.from_pretrained(merged)
    except Exception as exc:  # a config.json that is not one: many library error types
        raise ModelError(f"{merged}/config.json: unreadable: {first_line(exc)}") from None
    return config, writer.read_tokenizer_json(merged)


Pair = tuple[tuple[tuple[str, str], ...], str | None]  # (prompt turns, reference answer or None)


def _records(data: list[str], data_cfg: DataSection, limit: int) -> list[Pair]:
    bad: list[BadRecord] = []
    fmt = data_cfg.format if data_cfg.format != "text" else "auto"
    _, examples = load_examples(data, data_cfg.model_copy(update={"format": fmt}), bad)
    if bad:
        raise_bad_records(bad)
    if any(ex.is_text for ex in examples):
        raise DataError(f"{', '.join(data)}: plain-text records have no prompt to export-check; give prompt records")
    return [split_reference(ex) for ex in examples[:limit]]


def _held_out(run: dict[str, Any], data: Path | None, data_cfg: DataSection, limit: int) -> tuple[list[Pair], str]:
    """(turns, reference) pairs and where they came from: --data / output.export.data, else the run's local
    data.eval_path, else the fixed probe prompts."""
    if data is not None:
        return _records([str(data)], data_cfg, limit), str(data)
    eval_paths = run.get("config", {}).get("data", {}).get("eval_path") or []
    if eval_paths and all(Path(p).is_file() for p in eval_paths):
        return _records(list(eval_paths), data_cfg, limit), ", ".join(eval_paths)
    return [((("user", p),), None) for p in PROBES], "probe prompts (no held-out records given)"


def prompt_text(ids: list[int], tokenizer: Any) -> str:
    """The prompt as text for llama.cpp, which tokenizes it itself (and adds BOS itself where the tokenizer does)."""
    if adds_bos(tokenizer) and ids[:1] == [tokenizer.bos_token_id]:
        ids = ids[1:]
    return tokenizer.decode(ids, skip_special_tokens=False)


def _renderer(run: dict[str, Any], tokenizer: Any) -> Any:
    data_cfg = DataSection.model_validate({**run.get("config", {}).get("data", {}), "path": [], "eval_path": []})
    template = run.get("resolved", {}).get("template") or resolve_template(data_cfg.template, tokenizer)

    def render(turns: Any) -> list[int]:
        return encode_prompt(turns, template, tokenizer, data_cfg.system_prompt)

    return data_cfg, render


def _items(run: dict[str, Any], tokenizer: Any, data: Path | None, limit: int) -> tuple[list[verify.Item], str, Any]:
    data_cfg, render = _renderer(run, tokenizer)
    pairs, source = _held_out(run, data, data_cfg, limit)
    items = []
    for turns, ref in pairs:
        ids = render(turns)
        items.append(verify.Item(ids, prompt_text(ids, tokenizer), ref))
    return items, source, render


def _new_tokens(items: list[verify.Item], tokenizer: Any) -> int:
    """Answers longer than the longest reference cannot match it: stop early (as `kubetune generate` does)."""
    refs = [it.reference for it in items if it.reference is not None]
    if not refs:
        return PROBE_NEW_TOKENS
    longest = max(len(tokenizer(r, add_special_tokens=False).input_ids) for r in refs)
    return min(MAX_NEW_TOKENS, longest + 8)


def _readable(path: Path) -> None:
    """mkstemp makes 0600; a GGUF is meant to be mounted and served by another user: the umask decides."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)


def _write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        _readable(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _Job:
    """One export: the merged model loaded once, its reference answers computed once, then one file per type."""

    def __init__(self, merged: Path, dest: Path, run: dict[str, Any], data: Path | None, limit: int) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from kubetune.trainer.device import usable_cores

        config, tokenizer_json = _merged_config(merged)
        self.plan = writer.plan(config, tokenizer_json)  # refuses before the weights are even loaded
        self.merged, self.dest, self.threads = merged, dest, usable_cores()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(merged)
            self.model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
        except Exception as exc:  # damaged weights or tokenizer files: many library error types
            raise ModelError(f"{merged}: cannot load the merged model: {first_line(exc)}") from None
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.items, self.source, self.render = _items(run, self.tokenizer, data, limit)
        self.new_tokens = _new_tokens(self.items, self.tokenizer)
        self.reference = verify.transformers_answers(self.model, self.tokenizer, self.items, self.new_tokens)
        self.report: dict[str, Any] = {"merged_path": str(merged), "records": self.source, "files": {}}

    def one(self, kind: str) -> dict[str, Any]:
        """Write, check in llama.cpp, then rename into place (or remove); raises with the figures on a mismatch."""
        final = self.dest / file_name(kind)
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.", dir=self.dest)
        os.close(fd)
        tmp = Path(name)
        try:
            writer.write(tmp, self.plan, self.model.state_dict(), self.tokenizer, self.merged, kind)
            got = verify.llamacpp_answers(tmp, self.items, self.new_tokens, self.threads)
            fig = verify.figures(self.items, self.reference, got)
            why = verify.judge(kind, fig)
            entry = {"file": final.name, "verified": why is None, "bytes": tmp.stat().st_size, **fig}
            self.report["files"][kind] = entry if why is None else {**entry, "failure": why}
            if why is not None:
                raise ModelError(f"export {kind}: llama.cpp check failed: {why} (figures in {self.dest / REPORT})")
            _readable(tmp)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
            write_json_atomic(self.dest / REPORT, self.report)
            _readable(self.dest / REPORT)
        self._modelfile(kind)
        return entry

    def _modelfile(self, kind: str) -> None:
        tok = self.tokenizer
        shown = prompt_text(self.render((("user", ollama.PLACEHOLDER),)), tok)
        stops = [tok.eos_token] if tok.eos_token else []
        text = ollama.modelfile(file_name(kind), shown, stops, min(self.plan.config.max_position_embeddings, 4096))
        _write_text_atomic(self.dest / f"model-{kind}.Modelfile", text)


def check_kinds(kinds: list[str]) -> list[str]:
    known = list(GgufType.__args__)  # type: ignore[attr-defined]
    unknown = [k for k in kinds if k not in known]
    if unknown or not kinds:
        raise UsageError(f"export: unknown GGUF type(s) {unknown or '(none given)'} (known: {', '.join(known)})")
    return list(dict.fromkeys(kinds))


def export(
    output_dir: Path,
    kinds: list[str],
    data: Path | None = None,
    limit: int = 100,
    merged: Path | None = None,
    dest: Path | None = None,
) -> dict[str, Any]:
    """OUTPUT_DIR/merged -> OUTPUT_DIR/gguf/model-<type>.gguf (+ .Modelfile, export.json), each verified."""
    kinds = check_kinds(kinds)
    verify.require_llamacpp()
    merged = merged or output_dir / "merged"
    dest = dest or output_dir / "gguf"
    # run.json is read now and rewritten at the end: no other kubetune process on this directory in between.
    with outlock.hold(output_dir, "export") if output_dir.is_dir() else contextlib.nullcontext():
        run = load_run(output_dir)
        job = _Job(merged, dest, run, data, limit)
        dest.mkdir(parents=True, exist_ok=True)
        for kind in kinds:
            entry = job.one(kind)
            log.info("exported %s: %s verified in llama.cpp", kind, dest / entry["file"])
        if (output_dir / "run.json").is_file():
            keys = ("file", "verified", "records", "answers_equal", "exact_match_llamacpp", "exact_match_transformers")
            summary = {kind: {k: entry[k] for k in keys} for kind, entry in job.report["files"].items()}
            write_json_atomic(output_dir / "run.json", {**run, "export": {"dir": str(dest), "files": summary}})
    return {"dir": str(dest), **job.report}

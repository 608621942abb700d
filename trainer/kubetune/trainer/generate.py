"""`kubetune generate`: the base and the fine-tuned model answer the same prompts.

"Fine-tuned" is, by default, the model training produced: the adapter on the
base loaded as training loaded it (for a 4-bit/8-bit run the quantized base,
computing with bitsandbytes' training kernels). `--model merged` scores the
merged model instead, `--model original` the adapter on the unquantized base
(what kubetune did before: a model the adapter of a quantized run never saw).
eval.json records which. The base's answers come from the same weights with
the adapter switched off, so the comparison costs one load, not two. Prompts are
rendered with the template the run trained with (recorded in run.json), so
the fine-tuned model sees exactly the prompt shape it learned. With a data
file that has references, both are scored by exact match.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kubetune.api.config import DataSection
from kubetune.trainer import device as devices
from kubetune.trainer.data.formats import Example
from kubetune.trainer.data.loaders import BadRecord
from kubetune.trainer.data.pipeline import load_examples, raise_bad_records
from kubetune.trainer.data.render import encode_prompt, resolve_template
from kubetune.trainer.errors import DataError, ModelError, UsageError
from kubetune.trainer.models import adapter_tokenizer, first_line, load_adapted, resolve_path
from kubetune.trainer.report import write_json_atomic
from kubetune.trainer.runinfo import adapter_dir, load_run


def split_reference(example: Example) -> tuple[tuple[tuple[str, str], ...], str | None]:
    """Prompt turns and the reference answer (the last assistant turn)."""
    msgs = example.messages
    if msgs and msgs[-1][0] == "assistant":
        return msgs[:-1], msgs[-1][1]
    return msgs, None


def exact_match(prediction: str, reference: str) -> bool:
    """Equal after trimming surrounding whitespace: the strict metric the demo task is built for."""
    return prediction.strip() == reference.strip()


def padded(prompts: list[list[int]], pad: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of prompts padded to the longest, on the left or on the right."""
    width = max(map(len, prompts))

    def fill(row: list[int], value: int) -> list[int]:
        extra = [value] * (width - len(row))
        return extra + row if left else row + extra

    return torch.tensor([fill(p, pad) for p in prompts]), torch.tensor([fill([1] * len(p), 0) for p in prompts])


def generate_ids(model: Any, tokenizer: Any, prompts: list[list[int]], max_new_tokens: int, batch: int) -> list[str]:
    pad = tokenizer.pad_token_id
    out: list[str] = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        ids, mask = padded(chunk, pad, left=True)  # every prompt ends where generation starts
        with torch.no_grad():
            gen = model.generate(
                input_ids=ids.to(model.device),
                attention_mask=mask.to(model.device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
                eos_token_id=tokenizer.eos_token_id,
            )
        out += [tokenizer.decode(row, skip_special_tokens=True).strip() for row in gen[:, ids.shape[1] :]]
    return out


Item = tuple[str, tuple[tuple[str, str], ...], str | None]  # (prompt shown, turns, reference answer or None)


def compare(
    output_dir: Path,
    prompts: list[str],
    data: Path | None,
    adapter: Path | None = None,
    base: str | None = None,
    max_new_tokens: int = 64,
    limit: int | None = None,
    batch_size: int = 16,
    model_choice: str = "as_trained",
) -> dict[str, Any]:
    """Answer each prompt with the adapter off (base) and on (fine-tuned); score exact match where references exist."""
    from kubetune.trainer.merge import trained_base

    run = load_run(output_dir)
    adapter = adapter_dir(output_dir, adapter)
    data_cfg = DataSection.model_validate({**run.get("config", {}).get("data", {}), "path": [], "eval_path": []})
    tokenizer = adapter_tokenizer(adapter)
    template = run.get("resolved", {}).get("template") or resolve_template(data_cfg.template, tokenizer)
    items = _items(prompts, data, data_cfg, limit)
    trained = trained_base(run, adapter, base)
    merged = _merged_dir(output_dir, adapter) if model_choice == "merged" else None
    model = _load_for_generation(trained, adapter, model_choice)

    encoded = [encode_prompt(turns, template, tokenizer, data_cfg.system_prompt) for _, turns, _ in items]
    refs = [ref for _, _, ref in items]
    if all(r is not None for r in refs):
        # Answers longer than the longest reference cannot be exact matches: stop early.
        longest = max(len(tokenizer(r, add_special_tokens=False).input_ids) for r in refs if r is not None)
        max_new_tokens = min(max_new_tokens, longest + 8)
    with model.disable_adapter():
        plain = generate_ids(model, tokenizer, encoded, max_new_tokens, batch_size)
    if merged is not None:
        del model
        model = _load_merged(merged)
    tuned = generate_ids(model, tokenizer, encoded, max_new_tokens, batch_size)
    header = {
        "adapter": str(adapter),
        "base_model": trained.model.path,
        "quantization": trained.model.quantization,
        "finetuned_model": model_choice,
        **({"merged": str(merged)} if merged is not None else {}),
    }
    report = score(items, plain, tuned, header)
    write_json_atomic(output_dir / "eval.json", report)
    return report


def _items(prompts: list[str], data: Path | None, data_cfg: DataSection, limit: int | None) -> list[Item]:
    """The prompts given on the command line, then the records of --data with their reference answers."""
    items: list[Item] = [(p, (("user", p),), None) for p in prompts]
    if data is not None:
        bad: list[BadRecord] = []
        fmt = data_cfg.format if data_cfg.format != "text" else "auto"
        _, examples = load_examples([str(data)], data_cfg.model_copy(update={"format": fmt}), bad)
        if bad:
            raise_bad_records(bad)
        if any(ex.is_text for ex in examples):
            raise DataError(f"{data}: plain-text records have no prompt/reference; use --prompt instead")
        for ex in examples[:limit]:
            turns, ref = split_reference(ex)
            user = next((c for r, c in reversed(turns) if r == "user"), "")
            items.append((user, turns, ref))
    if not items:
        raise DataError("nothing to generate: no prompts and no records")
    return items


MODEL_CHOICES = ("as_trained", "merged", "original")


def _placement() -> Any:
    place = devices.choose(devices.detect())
    if place.device == "cpu":
        torch.set_num_threads(place.threads)
    return place


def _load_for_generation(trained: Any, adapter: Path, choice: str) -> Any:
    """The adapter on the base: as training loaded it (as_trained, merged's base column) or unquantized (original)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if choice not in MODEL_CHOICES:
        raise UsageError(f"--model {choice}: expected one of {', '.join(MODEL_CHOICES)}")
    place = _placement()
    if choice != "original" and trained.quantized:
        return load_adapted(trained.model, trained.dtype, place.device, adapter)
    base_path = resolve_path(trained.model.path)
    try:
        model = AutoModelForCausalLM.from_pretrained(base_path, dtype=place.dtype).to(place.device)
        return PeftModel.from_pretrained(model, adapter).eval()
    except Exception as exc:  # corrupt weights or config: many library error types
        raise ModelError(f"{adapter}: cannot load with base {base_path}: {first_line(exc)}") from None


def _merged_dir(output_dir: Path, adapter: Path) -> Path:
    """OUTPUT_DIR/merged, only if it was merged from this adapter."""
    from kubetune.trainer.merge import is_current

    merged = output_dir / "merged"
    if not is_current(merged, adapter):
        raise UsageError(f"--model merged: {merged} is not a merge of {adapter}; run `kubetune merge` first")
    return merged


def _load_merged(merged: Path) -> Any:
    from transformers import AutoModelForCausalLM

    place = _placement()
    try:
        return AutoModelForCausalLM.from_pretrained(merged, dtype=place.dtype).to(place.device).eval()
    except Exception as exc:  # corrupt weights or config: many library error types
        raise ModelError(f"{merged}: cannot load the merged model: {first_line(exc)}") from None


def score(items: list[Item], plain: list[str], tuned: list[str], header: dict[str, Any]) -> dict[str, Any]:
    """eval.json: every answer side by side, and exact match for the records that have a reference (pure)."""
    rows = []
    for (prompt, _, ref), b, f in zip(items, plain, tuned, strict=True):
        row: dict[str, Any] = {"prompt": prompt, "base": b, "finetuned": f}
        if ref is not None:
            row.update(reference=ref, base_exact=exact_match(b, ref), finetuned_exact=exact_match(f, ref))
        rows.append(row)
    scored = [r for r in rows if "reference" in r]
    report: dict[str, Any] = {**header, "records": rows}
    if scored:
        report["exact_match"] = {
            "n": len(scored),
            "base": sum(r["base_exact"] for r in scored) / len(scored),
            "finetuned": sum(r["finetuned_exact"] for r in scored) / len(scored),
        }
    return report


def print_report(report: dict[str, Any], show: int) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(100, Console().width))
    table = Table(title=f"base vs fine-tuned ({report.get('finetuned_model', 'as_trained')})", show_lines=True)
    has_ref = any("reference" in r for r in report["records"])
    table.add_column("prompt", overflow="fold", ratio=3)
    if has_ref:
        table.add_column("reference", overflow="fold", ratio=1)
    table.add_column("base", overflow="fold", ratio=3)
    table.add_column("fine-tuned", overflow="fold", ratio=2)
    for row in report["records"][:show]:

        def mark(text: str, ok: bool | None) -> str:
            return text if ok is None else f"{'✓' if ok else '✗'} {text}"

        cells = [row["prompt"]]
        if has_ref:
            cells.append(row.get("reference", ""))
        cells += [mark(row["base"], row.get("base_exact")), mark(row["finetuned"], row.get("finetuned_exact"))]
        table.add_row(*cells)
    console.print(table)
    em = report.get("exact_match")
    if em:
        console.print(
            f"held-out exact match on {em['n']} records: base {em['base']:.1%} -> fine-tuned {em['finetuned']:.1%}"
        )

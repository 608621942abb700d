"""Render examples to token ids and labels, masking what is not trained on.

An example becomes a list of segments (text, trained?). Each segment is
tokenized on its own, so the prompt is tokenized exactly as `generate` will
tokenize it at inference: no token straddles the prompt/answer seam. Labels
are the token ids on trained segments and -100 elsewhere (the model shifts
them). Everything here is pure given a tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kubetune.trainer.data.formats import Example
from kubetune.trainer.errors import DataError

IGNORE = -100
TEMPLATES = {
    "alpaca": (
        "Below is an instruction that describes a task. Write a response that appropriately completes "
        "the request.\n\n### Instruction:\n{prompt}\n\n### Response:\n"
    ),
    "plain": "{prompt}\n",
}


@dataclass(frozen=True)
class Segment:
    text: str
    trained: bool


@dataclass
class RenderStats:
    records: int = 0
    truncated: int = 0
    dropped_no_target: int = 0
    lengths: list[int] = field(default_factory=list)  # before truncation, to help choose max_length


def resolve_template(name: str, tokenizer: Any) -> str:
    """`chat`, or a literal template with `{prompt}`; `auto` prefers the tokenizer's chat template."""
    if name == "auto":
        return "chat" if getattr(tokenizer, "chat_template", None) else TEMPLATES["alpaca"]
    if name == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise DataError("data.template: 'chat' but the tokenizer has no chat template (use alpaca or plain)")
        return "chat"
    if name in TEMPLATES:
        return TEMPLATES[name]
    if "{prompt}" not in name:
        raise DataError(
            f"data.template: {name!r} is neither auto, chat, alpaca, plain nor a template containing {{prompt}}"
        )
    return name


def _with_system_turn(messages: Sequence[tuple[str, str]], system_prompt: str | None) -> list[tuple[str, str]]:
    """The turns, with data.system_prompt first unless the record brings its own system turn.

    One rule for every template, so a record renders the same way whichever template trains on it.
    """
    msgs = list(messages)
    if system_prompt and not any(r == "system" for r, _ in msgs):
        msgs.insert(0, ("system", system_prompt))
    return msgs


def _chat_messages(messages: Sequence[tuple[str, str]], system_prompt: str | None) -> list[dict[str, str]]:
    return [{"role": r, "content": c} for r, c in _with_system_turn(messages, system_prompt)]


def _chat_segments(example: Example, tokenizer: Any, system_prompt: str | None) -> list[Segment]:
    msgs = _chat_messages(example.messages, system_prompt)

    def render(upto: int, gen: bool) -> str:
        return tokenizer.apply_chat_template(msgs[:upto], tokenize=False, add_generation_prompt=gen)

    segments: list[Segment] = []
    consumed = ""
    for i, msg in enumerate(msgs):
        if msg["role"] != "assistant":
            continue
        prompt, full = render(i, True), render(i + 1, False)
        if not (prompt.startswith(consumed) and full.startswith(prompt)):
            raise DataError(
                f"{example.where}: the tokenizer's chat template does not render this conversation "
                "incrementally (a prefix changes when a turn is added); use data.template: alpaca or plain"
            )
        answer = full[len(prompt) :]
        core = answer.rstrip()  # the answer and its end-of-turn token; the newline after is not learned
        segments += [Segment(prompt[len(consumed) :], False), Segment(core, True)]
        consumed = prompt + core
    final = render(len(msgs), False)
    if not final.startswith(consumed):
        raise DataError(f"{example.where}: chat template renders the conversation inconsistently")
    if final[len(consumed) :]:
        segments.append(Segment(final[len(consumed) :], False))
    return [s for s in segments if s.text]


def _template_prompt(messages: Sequence[tuple[str, str]], template: str, where: str) -> str:
    system = "\n\n".join(c for r, c in messages if r == "system")
    users = [c for r, c in messages if r == "user"]
    if len(users) != 1 or sum(r == "assistant" for r, _ in messages) > 1:
        raise DataError(f"{where}: multi-turn conversations need data.template: chat")
    prompt = f"{system}\n\n{users[0]}" if system else users[0]
    return template.replace("{prompt}", prompt)


def segments_for(example: Example, template: str, tokenizer: Any, system_prompt: str | None) -> list[Segment]:
    """The segments of one example (EOS for non-chat templates is added as a token later)."""
    if example.is_text:
        return [Segment(example.text or "", True)]
    if template == "chat":
        return _chat_segments(example, tokenizer, system_prompt)
    msgs = _with_system_turn(example.messages, system_prompt)
    answer = next(c for r, c in msgs if r == "assistant")
    prompt = _template_prompt([m for m in msgs if m[0] != "assistant"], template, example.where)
    return [Segment(prompt, False), Segment(answer, True)]


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer's own policy starts sequences with BOS (chat templates carry their own)."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a").input_ids[:1] == [bos]


def tokenize_examples(
    examples: Sequence[Example],
    tokenizer: Any,
    template: str,
    system_prompt: str | None,
    train_on: str,
    max_length: int,
) -> tuple[list[dict[str, Any]], RenderStats]:
    """Token ids and labels for every example; returns kept rows and counts.

    Rows keep `where` so `data inspect` and errors can point at the record.
    """
    per_example = [segments_for(ex, template, tokenizer, system_prompt) for ex in examples]
    flat = [seg.text for segs in per_example for seg in segs]
    encoded = tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
    bos = [tokenizer.bos_token_id] if adds_bos(tokenizer) else []
    eos_id = tokenizer.eos_token_id
    stats = RenderStats()
    rows: list[dict[str, Any]] = []
    cursor = 0
    for example, segs in zip(examples, per_example, strict=True):
        ids: list[int] = []
        labels: list[int] = []
        text_like = example.is_text or template != "chat"
        if text_like and bos:
            ids += bos
            labels += [IGNORE]
        for seg in segs:
            tokens = list(encoded[cursor])
            cursor += 1
            if seg.trained and text_like and eos_id is not None:
                tokens.append(eos_id)  # teach the model to stop
            trained = seg.trained or train_on == "all"
            ids += tokens
            labels += tokens if trained else [IGNORE] * len(tokens)
        stats.records += 1
        stats.lengths.append(len(ids))
        if len(ids) > max_length:
            stats.truncated += 1
            ids, labels = ids[:max_length], labels[:max_length]
        # The first token is never predicted (nothing precedes it): never count it as a target. This also
        # keeps a packed row from predicting one record's first token from the previous record.
        labels[0] = IGNORE
        if all(label == IGNORE for label in labels):
            stats.dropped_no_target += 1
            continue
        rows.append({"input_ids": ids, "labels": labels, "where": example.where})
    return rows, stats


def encode_prompt(
    messages: Sequence[tuple[str, str]], template: str, tokenizer: Any, system_prompt: str | None
) -> list[int]:
    """Token ids of a prompt for generation, identical to the prompt part used in training."""
    if template == "chat":
        msgs = _chat_messages(messages, system_prompt)
        text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    msgs = _with_system_turn(messages, system_prompt)
    text = _template_prompt(msgs, template, "prompt")
    bos = [tokenizer.bos_token_id] if adds_bos(tokenizer) else []
    return bos + tokenizer(text, add_special_tokens=False)["input_ids"]


def trained_spans(tokenizer: Any, input_ids: Sequence[int], labels: Sequence[int]) -> list[tuple[str, bool]]:
    """Decoded text split into (text, trained?) runs, for showing what the loss sees."""
    runs: list[tuple[str, bool]] = []
    start = 0
    for i in range(1, len(input_ids) + 1):
        if i == len(input_ids) or (labels[i] != IGNORE) != (labels[start] != IGNORE):
            runs.append((tokenizer.decode(input_ids[start:i]), labels[start] != IGNORE))
            start = i
    return runs

"""Turn records of any supported format into one of two shapes: a conversation or plain text.

Conversations carry the trained-on part in their assistant turns; plain text is
trained on whole. Format detection looks at the first record's columns, the
same way a person would, and an explicit `data.format` overrides it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubetune.trainer.data.loaders import BadRecord, Record
from kubetune.trainer.errors import DataError

FORMAT_FIELDS: dict[str, tuple[str, ...]] = {
    "messages": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "alpaca": ("instruction", "output"),
    "input_output": ("input", "output"),
}
ROLES = {"system", "user", "assistant"}


@dataclass(frozen=True)
class Example:
    """A normalized record: `messages` for conversations, `text` for plain text."""

    where: str
    messages: tuple[tuple[str, str], ...] = ()
    text: str | None = None

    @property
    def is_text(self) -> bool:
        return self.text is not None


def detect_format(columns: set[str], text_field: str) -> str:
    """Pick a format from column names; alpaca before input_output since it has both."""
    for name, fields in FORMAT_FIELDS.items():
        if set(fields) <= columns:
            return name
    if text_field in columns:
        return "text"
    raise DataError(
        f"cannot tell the data format from the columns {sorted(columns)}: expected one of "
        + ", ".join(f"{n} ({'+'.join(f)})" for n, f in FORMAT_FIELDS.items())
        + f", or text ({text_field}); set data.format / data.text_field"
    )


def _need_str(values: dict[str, Any], key: str, *, allow_empty: bool = False) -> str:
    if key not in values or values[key] is None:
        raise ValueError(f"missing field '{key}'")
    value = values[key]
    if not isinstance(value, str):
        raise ValueError(f"field '{key}' must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise ValueError(f"field '{key}' is empty")
    return value


def _messages(value: Any, key: str) -> list[tuple[str, str]]:
    if isinstance(value, str):
        return []
    if not isinstance(value, list) or not value:
        raise ValueError(f"field '{key}' must be a non-empty list of {{role, content}} objects")
    out = []
    for i, msg in enumerate(value):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise ValueError(f"{key}[{i}] must be an object with 'role' and 'content'")
        if msg["role"] not in ROLES:
            raise ValueError(f"{key}[{i}].role must be one of {sorted(ROLES)}, got {msg['role']!r}")
        if not isinstance(msg["content"], str):
            raise ValueError(f"{key}[{i}].content must be a string")
        out.append((msg["role"], msg["content"]))
    return out


def normalize(record: Record, fmt: str, text_field: str) -> Example:
    """One record to an Example; raises ValueError with a message naming the field."""
    v = record.values
    if fmt == "text":
        return Example(record.where, text=_need_str(v, text_field))
    if fmt == "input_output":
        return Example(record.where, (("user", _need_str(v, "input")), ("assistant", _need_str(v, "output"))))
    if fmt == "alpaca":
        prompt = _need_str(v, "instruction")
        extra = v.get("input")
        if extra is not None and not isinstance(extra, str):
            raise ValueError("field 'input' must be a string")
        if extra and extra.strip():
            prompt = f"{prompt}\n\n{extra}"
        return Example(record.where, (("user", prompt), ("assistant", _need_str(v, "output"))))
    if fmt == "prompt_completion":
        if "prompt" not in v or "completion" not in v:
            raise ValueError(f"missing field '{'prompt' if 'prompt' not in v else 'completion'}'")
        prompt = _messages(v["prompt"], "prompt") or [("user", _need_str(v, "prompt"))]
        completion = _messages(v["completion"], "completion") or [("assistant", _need_str(v, "completion"))]
        if any(role != "assistant" for role, _ in completion):
            raise ValueError("completion messages must all have role 'assistant'")
        return Example(record.where, (*prompt, *completion))
    if fmt == "messages":
        if "messages" not in v:
            raise ValueError("missing field 'messages'")
        msgs = _messages(v["messages"], "messages")
        if not msgs:
            raise ValueError("field 'messages' must be a list of {role, content} objects")
        if not any(role == "assistant" for role, _ in msgs):
            raise ValueError("messages has no assistant turn to learn from")
        return Example(record.where, tuple(msgs))
    raise DataError(f"data.format: unknown format {fmt!r}")


def normalize_all(records: list[Record], fmt: str, text_field: str, bad: list[BadRecord]) -> tuple[str, list[Example]]:
    """Normalize every record; resolves `auto` from the first record's columns."""
    if not records:
        raise DataError("the data files contain no records")
    if fmt == "auto":
        try:
            fmt = detect_format(set(records[0].values), text_field)
        except DataError as exc:
            raise DataError(f"{records[0].where}: {exc}") from None
    examples = []
    for record in records:
        try:
            examples.append(normalize(record, fmt, text_field))
        except ValueError as exc:
            bad.append(BadRecord(record.where, str(exc)))
    return fmt, examples

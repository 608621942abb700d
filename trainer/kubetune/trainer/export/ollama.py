"""The Ollama Modelfile written next to each GGUF: the prompt format the run trained with, greedy decoding.

The TEMPLATE is the training prompt itself, rendered once with a placeholder
for the user's text (so a chat template's default system turn, or
data.system_prompt, is there exactly as the model saw it), then turned into
Ollama's single-turn `{{ .Prompt }}` form. Pure: text in, text out.
"""

from __future__ import annotations

PLACEHOLDER = "KUBETUNE_PROMPT_PLACEHOLDER"


def _go_literal(text: str) -> str:
    """Text that Ollama's Go template engine prints as is: `{{` would open an action."""
    return text.replace("{{", '{{ "{{" }}')


def template(rendered_prompt: str, end_of_turn: str | None) -> str:
    """Ollama TEMPLATE from a prompt rendered with PLACEHOLDER as the user's text."""
    if rendered_prompt.count(PLACEHOLDER) != 1:
        raise ValueError("the rendered prompt must contain the placeholder exactly once")
    before, after = rendered_prompt.split(PLACEHOLDER)
    return _go_literal(before) + "{{ .Prompt }}" + _go_literal(after) + "{{ .Response }}" + (end_of_turn or "")


def modelfile(gguf_name: str, rendered_prompt: str, stops: list[str], context: int) -> str:
    """The Modelfile text for `ollama create NAME -f THIS_FILE`, run from the directory holding both files."""
    if '"""' in rendered_prompt:
        raise ValueError('the prompt contains """, which a Modelfile cannot quote')
    lines = [
        "# Written by `kubetune export`, verified in llama.cpp: ollama create NAME -f THIS_FILE",
        f"FROM ./{gguf_name}",
        f'TEMPLATE """{template(rendered_prompt, stops[0] if stops else None)}"""',
        "PARAMETER temperature 0",
        f"PARAMETER num_ctx {context}",
    ]
    lines += [f"PARAMETER stop {_quoted(s)}" for s in stops]
    return "\n".join(lines) + "\n"


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

"""Conversations: reading chat rows, and rendering them through a chat template
with labels on assistant tokens only.

A row holds ``messages`` (OpenAI / Hugging Face chat format: ``role`` and
``content``) or ShareGPT ``conversations`` (``from`` and ``value``; ``human``,
``gpt``, ``system``). Both become one list of ``{"role", "content"}`` dicts with
roles ``system``, ``user``, ``assistant``.
"""

from __future__ import annotations

from dataclasses import dataclass

from lp.core.errors import LpError

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system"}  # fmt: skip
IGNORE = -100  # the label transformers' loss skips

# The documented default for tokenizers without a chat template (the tiny base's, many base
# models'): Zephyr-style role markers as plain text, each assistant turn closed by the EOS
# token so that generation stops there. Saved into the export as the tokenizer's template.
DEFAULT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|' + message['role'] + '|>\\n' + message['content'] -}}"
    "{%- if message['role'] == 'assistant' -%}{{- eos_token -}}{%- endif -%}"
    "{{- '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- endif -%}"
)


def conversation(row: dict, where: str) -> list[dict]:
    """The messages of one chat row, checked; ``where`` names the file and row in errors."""
    if not isinstance(row, dict):
        raise LpError(f"{where}: a chat row must be an object with 'messages' or 'conversations'")
    if row.get("messages") is not None:
        turns, role_key, text_key, roles = row["messages"], "role", "content", {r: r for r in ROLES}
    elif row.get("conversations") is not None:
        turns, role_key, text_key, roles = row["conversations"], "from", "value", SHAREGPT_ROLES
    else:
        fields = ", ".join(map(str, row)) or "none"
        raise LpError(f"{where}: the row has neither 'messages' nor 'conversations' (fields: {fields})")
    if not isinstance(turns, list) or not turns:
        raise LpError(f"{where}: the conversation is empty or not a list")
    out = []
    for turn in turns:
        if not isinstance(turn, dict) or not isinstance(turn.get(text_key), str):
            raise LpError(f"{where}: every turn needs {role_key!r} and a text {text_key!r}")
        role = turn.get(role_key)
        if role not in roles:
            raise LpError(f"{where}: unknown role {role!r}; allowed: {', '.join(roles)}")
        out.append({"role": roles[role], "content": turn[text_key]})
    if not any(m["role"] == "assistant" for m in out):
        raise LpError(f"{where}: the conversation has no assistant turn, so nothing to learn from")
    return out


def chat_tokenizer(tokenizer, default_template: bool, name: str):
    """``tokenizer`` with a chat template: its own, or ``DEFAULT_TEMPLATE`` when it has
    none and ``default_template`` allows it (the export then saves that template)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer
    if not default_template:
        raise LpError(
            f"the tokenizer of {name} has no chat template and data.default_template=false; "
            "allow lp's default template (data.default_template=true) or use a checkpoint that has one"
        )
    tokenizer.chat_template = DEFAULT_TEMPLATE
    return tokenizer


@dataclass
class Rendered:
    input_ids: list[int]
    labels: list[int]  # the token itself on assistant turns, IGNORE elsewhere


def render(tokenizer, messages: list[dict]) -> Rendered:
    """Tokens and labels of a conversation, rendered message by message.

    The template renders each prefix of the conversation; what a turn adds to
    the text is tokenised on its own, so the tokens are exactly the pieces of
    the full rendering. An assistant turn's piece starts after the generation
    prompt (``add_generation_prompt=True`` of the turns before it): the model
    learns the reply and the template's end-of-turn marker, never the prompt.
    """
    ids: list[int] = []
    labels: list[int] = []
    done = ""
    for k, m in enumerate(messages):
        if m["role"] == "assistant":
            prompt = _text(tokenizer, messages[:k], generation=True)
            _extend(tokenizer, ids, labels, _piece(done, prompt), learn=False)
            done = prompt
        full = _text(tokenizer, messages[: k + 1], generation=False)
        _extend(tokenizer, ids, labels, _piece(done, full), learn=m["role"] == "assistant")
        done = full
    return Rendered(ids, labels)


def _text(tokenizer, messages: list[dict], generation: bool) -> str:
    if not messages:
        return ""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)


def _piece(done: str, text: str) -> str:
    if not text.startswith(done):  # e.g. a template that rewrites earlier turns
        raise LpError(
            "the chat template does not render a conversation as a growing prefix, so lp cannot tell its "
            "assistant tokens apart; use a checkpoint whose template does"
        )
    return text[len(done) :]


def _extend(tokenizer, ids: list[int], labels: list[int], text: str, learn: bool) -> None:
    if not text:
        return
    piece = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids.extend(piece)
    labels.extend(piece if learn else [IGNORE] * len(piece))

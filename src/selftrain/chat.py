"""Chat messages as TRL and transformers' chat templates take them: a prompt is a list of
``{"role", "content"}`` messages (the system prompt the student saw, then the question), an
answer one assistant message."""

from __future__ import annotations

from typing import Any

Message = dict[str, str]


def prompt_messages(user: str, system: str | None) -> list[Message]:
    """The prompt for ``user`` under the system prompt ``system`` (None or empty: none)."""
    head = [{"role": "system", "content": system}] if system else []
    return [*head, {"role": "user", "content": user}]


def assistant(text: str) -> list[Message]:
    """``text`` as TRL's conversational completion: one assistant message."""
    return [{"role": "assistant", "content": text}]


def completion_text(value: Any) -> str:
    """A completion's text from either form a record may hold: a string (run directories
    written before pairs were conversational) or a list of messages (the last one's)."""
    if isinstance(value, str):
        return value
    return value[-1]["content"]

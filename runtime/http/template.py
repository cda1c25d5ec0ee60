"""The model's chat template on the server: messages (and tools) to token ids, with the SDK's helpers.

Two ways to turn messages into ids. A stateless request renders its whole conversation
(`prompt_ids`). A continuation (`turn_ids`, for `previous_response_id`) renders only the new
messages, after a fixed placeholder exchange, so that the history the session holds is never
re-rendered: its assistant turns stay the exact ids the model generated.
"""

from __future__ import annotations

import json
from typing import Any

from jinja2 import TemplateError

from kakeya.tokenizer import chat_eos_token_ids, closing_ids, render_ids

from .errors import InvalidRequest
from .schemas import ChatMessage, Tool, text_of

_PLACEHOLDER = [{"role": "user", "content": "."}, {"role": "assistant", "content": "."}]
_PROBE_TOOL = {"type": "function", "function": {"name": "kakeya_probe_tool", "description": "probe",
                                                 "parameters": {"type": "object", "properties": {}}}}


class ChatTemplate:
    """One tokenizer and one template (the model's, unless `template` replaces it)."""

    def __init__(self, tokenizer: Any, template: str | None = None) -> None:
        self.tokenizer = tokenizer
        self._kwargs: dict[str, Any] = {"chat_template": template} if template else {}
        # A base model has no template: completions still work; chat answers 400 saying why.
        self.is_available = bool(template or getattr(tokenizer, "chat_template", None))
        self.closing: tuple[int, ...] = ()
        self.eos_token_ids = frozenset({tokenizer.eos_token_id} - {None})
        self.supports_tools = False
        if not self.is_available:
            return
        self.closing = tuple(closing_ids(tokenizer, **self._kwargs))
        self.eos_token_ids = frozenset(chat_eos_token_ids(tokenizer, **self._kwargs))
        probe = [{"role": "user", "content": "Hi"}]
        self.supports_tools = self._render(probe, True, [_PROBE_TOOL]) != self._render(probe, True, None)

    def prompt_ids(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        """The whole conversation, then the generation prompt."""
        return self._render(messages, True, self._tools(tools))

    def turn_ids(self, messages: list[dict]) -> list[int]:
        """New messages as they follow any earlier turn, then the generation prompt."""
        head = self._render(_PLACEHOLDER, False, None)
        full = self._render(_PLACEHOLDER + messages, True, None)
        if len(full) <= len(head) or full[:len(head)] != head:
            raise InvalidRequest("the chat template cannot render these messages as a continuation")
        return full[len(head):]

    def pending_closing(self, generated: list[int], stopped_at_eos: bool) -> tuple[int, ...]:
        """The end-of-turn ids the model did not emit itself, to append before the next turn."""
        closing = self.closing
        emitted = next((k for k in range(min(len(generated), len(closing)), 0, -1)
                        if tuple(generated[-k:]) == closing[:k]), 0)
        if stopped_at_eos and emitted == 0 and generated and generated[-1] in self.eos_token_ids:
            return closing  # an EOS outside the closing ends the reply; the closing still follows
        return closing[emitted:]

    def _tools(self, tools: list[dict] | None) -> list[dict] | None:
        if tools and not self.supports_tools:
            raise InvalidRequest("this model's chat template does not support tools "
                                 "(serve with --http-chat-template FILE naming one that does)")
        return tools or None

    def _render(self, messages: list[dict], generation_prompt: bool, tools: list[dict] | None) -> list[int]:
        if not self.is_available:
            raise InvalidRequest("the model has no chat template: use /v1/completions, or serve with "
                                 "--http-chat-template FILE")
        kwargs = dict(self._kwargs, tools=tools) if tools else self._kwargs
        try:
            return render_ids(self.tokenizer, messages, add_generation_prompt=generation_prompt, **kwargs)
        except (TemplateError, TypeError, ValueError, KeyError, IndexError) as exc:
            # Templates reject what they cannot render (raise_exception): the request is at fault.
            raise InvalidRequest(f"the chat template cannot render this conversation: {exc}") from None


def message_dicts(messages: list[ChatMessage]) -> list[dict]:
    """Messages as templates read them: text content, tool calls with their arguments as objects."""
    out = []
    for message in messages:
        item: dict[str, Any] = {"role": message.role, "content": text_of(message.content)}
        if message.name is not None:
            item["name"] = message.name
        if message.tool_call_id is not None:
            item["tool_call_id"] = message.tool_call_id
        if message.tool_calls:
            item["tool_calls"] = [{"id": call.id, "type": "function",
                                   "function": {"name": call.function.name,
                                                "arguments": _arguments(call.function.arguments)}}
                                  for call in message.tool_calls]
        out.append(item)
    return out


def tool_dicts(tools: list[Tool] | None) -> list[dict] | None:
    if not tools:
        return None
    return [tool.model_dump(exclude_none=True) for tool in tools]


def _arguments(text: str) -> Any:
    # Templates write arguments with `tojson`: an object renders as JSON, a string would be quoted twice.
    try:
        return json.loads(text)
    except ValueError:
        return text

"""Tool calls in the Qwen/Hermes form, `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`,
turned into OpenAI `tool_calls`; and a holdback that keeps such text out of a streamed reply."""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(re.escape(OPEN) + r"(.*?)(?:" + re.escape(CLOSE) + r"|$)", re.DOTALL)


@dataclass(frozen=True, slots=True)
class ParsedReply:
    content: str | None  # the text outside tool-call blocks, None when there is none
    tool_calls: list[dict]  # OpenAI's form: id, type, function {name, arguments as a JSON string}


def parse_reply(text: str) -> ParsedReply:
    """Splits a reply into content and tool calls. A block that is not a JSON object with a name
    stays in the content as text: the model wrote something, and it is not a call."""
    calls, kept, last = [], [], 0
    for match in _BLOCK.finditer(text):
        call = _call(match.group(1))
        if call is None:
            continue
        kept.append(text[last:match.start()])
        last = match.end()
        calls.append(call)
    kept.append(text[last:])
    content = "".join(kept).strip() if calls else text
    return ParsedReply(content or None, calls)


def _call(body: str) -> dict | None:
    try:
        value = json.loads(body.strip())
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return {"id": f"call_{secrets.token_hex(12)}", "type": "function",
            "function": {"name": value["name"], "arguments": arguments}}


class Holdback:
    """Streams text until a tool call may have begun, and holds everything from there on, so a
    client never sees half a call as content. `push` returns what may go out now."""

    def __init__(self, markers: tuple[str, ...] = (OPEN,)) -> None:
        self._markers = markers
        self._pending = ""
        self.held = False  # a marker was seen: the rest is parsed at the end

    def push(self, text: str) -> str:
        if self.held:
            self._pending += text
            return ""
        self._pending += text
        for marker in self._markers:
            at = self._pending.find(marker)
            if at >= 0:
                self.held = True
                out, self._pending = self._pending[:at], self._pending[at:]
                return out
        keep = max((_partial_suffix(self._pending, m) for m in self._markers), default=0)
        out, self._pending = self._pending[:len(self._pending) - keep], self._pending[len(self._pending) - keep:]
        return out

    def flush(self) -> str:
        """What is left: held text (a call, parsed by the caller) or a partial marker that was not one."""
        out, self._pending = self._pending, ""
        return out


def _partial_suffix(text: str, marker: str) -> int:
    """The length of the longest end of `text` that begins `marker` (0 if none)."""
    for k in range(min(len(text), len(marker) - 1), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0

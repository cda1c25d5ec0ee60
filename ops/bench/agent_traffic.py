"""Traffic for the speculative benchmark: multi-turn agent sessions built on the model's own outputs, and free chat.

An agent session holds a code file and works on it over several turns, as a coding agent does:
it re-emits the file with a rename, calls a tool with a fixed JSON schema, summarises the tool's
output quoting the failing line, re-emits its own previous version of the file with a second edit,
and calls the tool again. Every assistant turn is the model's own greedy output, kept in the
session's history, so what later turns echo is what this model wrote. Each session gets its own
file and its own names, so sessions do not simply repeat each other. Free chat is single-turn,
one distinct question per session, with nothing to echo.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from kakeya.proto.v1 import runtime_pb2 as pb

FILES = [
    ("resize.py", "parse_args", "width", "640", "import argparse\n\n\ndef parse_args(argv=None):\n    parser = "
     "argparse.ArgumentParser(description=\"Resize images\")\n    parser.add_argument(\"src\", help=\"input folder\")\n"
     "    parser.add_argument(\"dst\", help=\"output folder\")\n    parser.add_argument(\"--width\", type=int, "
     "default=640)\n    parser.add_argument(\"--quality\", type=int, default=85)\n    return parser.parse_args(argv)\n"),
    ("net.py", "retry", "attempts", "3", "import time\n\n\ndef retry(fn, attempts=3, delay_s=0.5):\n    for attempt in "
     "range(attempts):\n        try:\n            return fn()\n        except ConnectionError:\n            if attempt == "
     "attempts - 1:\n                raise\n            time.sleep(delay_s * 2 ** attempt)\n"),
    ("cache.py", "Cache", "size", "128", "from collections import OrderedDict\n\n\nclass Cache:\n    def __init__(self, "
     "size=128):\n        self.size = size\n        self.items = OrderedDict()\n\n    def get(self, key):\n        if key "
     "not in self.items:\n            return None\n        self.items.move_to_end(key)\n        return self.items[key]\n\n"
     "    def put(self, key, value):\n        self.items[key] = value\n        self.items.move_to_end(key)\n        if "
     "len(self.items) > self.size:\n            self.items.popitem(last=False)\n"),
    ("orders.py", "summarize", "status", "\"paid\"", "def summarize(orders, status=\"paid\"):\n    total = 0\n    for "
     "order in orders:\n        if order[\"status\"] == status:\n            total += order[\"amount\"]\n    print(f\""
     "{status} orders: {total:.2f}\")\n    return total\n"),
]
NAMES = ["alpha", "bravo", "delta", "ember", "fjord", "grove", "harbor", "indigo", "jasper", "koala", "lumen",
         "meadow", "nectar", "onyx", "pixel", "quartz"]
SYSTEM = ("You are a coding agent working in a repository. To use a tool, reply with one JSON object only, of the "
          "form {\"tool\": \"<name>\", \"arguments\": {\"path\": \"<file>\", \"verbose\": true}}. Tools: read_file, "
          "run_tests.")
TOOL_OUTPUT = ("============ test session starts ============\ncollected 6 items\n\ntests/test_{stem}.py ...F..\n\n"
               "FAILED tests/test_{stem}.py::test_{new} - AssertionError: expected {value} got None\n"
               "======= 1 failed, 5 passed in 0.42s =======\n")
CHAT = [
    "What are the main differences between a violin and a viola?", "Write a short story about a lighthouse keeper.",
    "How does compound interest work?", "Give me a recipe idea for a rainy evening.", "Why is the ocean salty?",
    "What should I pack for a weekend hiking trip?", "Explain how vaccines train the immune system.",
    "Describe the city of Rome to a first-time visitor.", "Why do cats purr?", "How do bees make honey?",
    "What is the best way to learn a new language?", "Tell me about the history of the bicycle.",
    "How do airplanes stay in the air?", "What makes a good birthday party for a child?",
    "Why do leaves change colour in autumn?", "Suggest three board games for a family evening.",
    "What causes thunder and lightning?", "Write a poem about the first snow of winter.",
    "How can I sleep better at night?", "Explain the rules of chess in simple words.",
]


# How the agent starts the model's reply, as agents prefill: a code block, a tool call, a quotation.
CODE, CALL, QUOTE = "```python\n", "{\"tool\": \"", "The tests report: \""


def agent_turns(index: int) -> list[tuple[str, str]]:
    """The turns of agent session `index`: each user message and the start of the reply."""
    path, old, param, value, source = FILES[index % len(FILES)]
    name = NAMES[index % len(NAMES)]
    new = f"{old}_{name}"
    stem = path.removesuffix(".py")
    changed = str(int(value) * 2) if value.isdigit() else f"\"{name}\""
    return [
        (f"Here is `{path}`:\n```python\n{source}```\nRename `{old}` to `{new}` everywhere and output the whole "
         "file.", CODE),
        (f"Run the tests for `{path}`. Reply with the JSON tool call only.", CALL),
        (f"The tool returned:\n{TOOL_OUTPUT.format(stem=stem, new=new, value=value)}\nSummarize the result in two "
         "sentences, quoting the failing line exactly.", QUOTE),
        (f"Here is `{path}` as you wrote it:\n```python\n{{reply0}}```\nNow change the default of `{param}` from "
         f"{value} to {changed} and output the whole file again.", CODE),
        (f"Read `{path}` back to check it. Reply with the JSON tool call only.", CALL),
    ]


class Turns:
    """Token ids of each turn for a chat-templated model: the first with the system prompt, later ones as the
    template would continue the conversation after the model's own reply."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        system = [{"role": "system", "content": SYSTEM}]
        self._system_text = tokenizer.apply_chat_template(system, tokenize=False)
        self._eos = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)

    def first(self, message: str, start: str = "") -> list[int]:
        text = self.tokenizer.apply_chat_template(
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": message}],
            add_generation_prompt=True, tokenize=False)
        return self.tokenizer(text + start, add_special_tokens=False)["input_ids"]

    def quote(self, reply: list[int]) -> str:
        """The code of an earlier reply, as an agent would hand the file back."""
        text = self.tokenizer.decode([t for t in reply if t != self._eos])
        return text.split("```")[0].rstrip("\n") + "\n"

    def next(self, message: str, reply: list[int], start: str = "") -> list[int]:
        text = self.tokenizer.apply_chat_template(
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": message}],
            add_generation_prompt=True, tokenize=False)[len(self._system_text):]
        close = [] if reply and reply[-1] == self._eos else [self._eos]
        return close + self.tokenizer("\n" + text + start, add_special_tokens=False)["input_ids"]


@dataclass
class Outcome:
    """What one session did: its generated tokens, its whole history (prompts and replies, each
    token marked as generated or not) and the draft counts its Generates reported."""

    tokens: list[int] = field(default_factory=list)
    history: list[int] = field(default_factory=list)
    generated: list[bool] = field(default_factory=list)
    drafted: int = 0
    accepted: int = 0
    ended: float = 0.0

    def appended(self, ids: list[int]) -> None:
        self.history += ids
        self.generated += [False] * len(ids)

    def take(self, response, reply: list[int]) -> None:
        if response.WhichOneof("payload") == "token_id":
            reply.append(response.token_id)
            self.tokens.append(response.token_id)
            self.history.append(response.token_id)
            self.generated.append(True)
        elif response.WhichOneof("payload") == "done":
            self.drafted += response.done.draft_token_count
            self.accepted += response.done.accepted_draft_token_count


async def agent_session(stub, turns: Turns, messages: list[tuple[str, str]], max_tokens: int) -> Outcome:
    """One session through all its turns."""
    sid = (await stub.CreateSession(pb.CreateSessionRequest())).session_id
    outcome = Outcome()
    reply: list[int] = []
    replies: list[list[int]] = []
    for i, (message, start) in enumerate(messages):
        if "{reply0}" in message:
            message = message.replace("{reply0}", turns.quote(replies[0]))
        ids = turns.first(message, start) if i == 0 else turns.next(message, reply, start)
        await stub.AppendTokens(pb.AppendTokensRequest(session_id=sid, token_ids=ids))
        outcome.appended(ids)
        reply = []
        async for response in stub.Generate(pb.GenerateRequest(session_id=sid, max_tokens=max_tokens)):
            outcome.take(response, reply)
        replies.append(reply)
    await stub.CloseSession(pb.CloseSessionRequest(session_id=sid))
    outcome.ended = time.perf_counter()
    return outcome


async def chat_session(stub, prompt: list[int], max_tokens: int) -> Outcome:
    sid = (await stub.CreateSession(pb.CreateSessionRequest(no_default_eos=True))).session_id
    await stub.AppendTokens(pb.AppendTokensRequest(session_id=sid, token_ids=prompt))
    outcome = Outcome()
    outcome.appended(prompt)
    async for response in stub.Generate(pb.GenerateRequest(session_id=sid, max_tokens=max_tokens)):
        outcome.take(response, [])
    await stub.CloseSession(pb.CloseSessionRequest(session_id=sid))
    outcome.ended = time.perf_counter()
    return outcome


async def run_sessions(sessions) -> dict:
    """All sessions at once (coroutines from agent_session or chat_session); wall time to the last token."""
    started = time.perf_counter()
    outcomes: list[Outcome] = await asyncio.gather(*sessions)
    return {"streams": [o.tokens for o in outcomes], "histories": [(o.history, o.generated) for o in outcomes],
            "wall_s": max(o.ended for o in outcomes) - started,
            "generated": sum(len(o.tokens) for o in outcomes),
            "drafted": sum(o.drafted for o in outcomes), "accepted": sum(o.accepted for o in outcomes)}

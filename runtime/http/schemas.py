"""Request bodies of the OpenAI-compatible routes, validated strictly: wrong types and unknown
fields are answered 400 rather than guessed at."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import InvalidRequest

_STRICT = ConfigDict(extra="forbid", strict=True)
# Each streamed piece is checked against the ends of every stop string: keep that cost small.
MAX_STOP_CHARS = 256
# The most tokens one streamed piece takes from the token stream (a reader that fell behind
# catches up in one go), and so the ceiling of kakeya_min_tokens_per_message.
MAX_TOKENS_PER_MESSAGE = 64


class _Strict(BaseModel):
    model_config = _STRICT


class TextPart(_Strict):
    type: Literal["text", "input_text", "output_text"]
    text: str
    annotations: list[Any] | None = None  # output_text parts echoed back by clients carry them


class FunctionCall(_Strict):
    name: str
    arguments: str


class ToolCall(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class FunctionDef(_Strict):
    name: str = Field(min_length=1, max_length=256)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDef


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(_Strict):
    model: str | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)
    stream: bool = False
    user: str | None = None
    # Outside OpenAI's schema: after the first token, hold tokens until this many are ready, so a
    # streamed chunk carries up to this many tokens' text (gRPC's min_tokens_per_message).
    kakeya_min_tokens_per_message: int = Field(1, ge=1, le=MAX_TOKENS_PER_MESSAGE)


class _Generating(_Sampling):
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    n: int = 1
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None

    @model_validator(mode="after")
    def _supported(self) -> "_Generating":
        if self.n != 1:
            raise ValueError("n must be 1: one choice per request")
        if self.presence_penalty or self.frequency_penalty:
            raise ValueError("presence_penalty and frequency_penalty are not supported (send 0 or omit them)")
        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        if len(stops) > 4 or any(not 0 < len(s) <= MAX_STOP_CHARS for s in stops):
            raise ValueError(f"stop takes up to 4 non-empty strings of at most {MAX_STOP_CHARS} characters")
        return self

    @property
    def stop_strings(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class ChatCompletionRequest(_Generating):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[Tool] | None = None
    tool_choice: Literal["auto", "none"] | None = None
    parallel_tool_calls: bool | None = None

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Generating):
    prompt: str | list[int] | list[str] | list[list[int]]
    echo: bool | None = None

    @model_validator(mode="after")
    def _one_prompt(self) -> "CompletionRequest":
        if self.echo:
            raise ValueError("echo is not supported")
        if isinstance(self.prompt, list) and self.prompt and isinstance(self.prompt[0], (str, list)):
            if len(self.prompt) != 1:
                raise ValueError("prompt: one prompt per request")
            self.prompt = self.prompt[0]
        if not self.prompt:
            raise ValueError("prompt must not be empty")
        return self


class InputMessage(_Strict):
    type: Literal["message"] | None = None
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[TextPart]
    id: str | None = None
    status: str | None = None


class ResponsesRequest(_Sampling):
    input: str | list[InputMessage]
    instructions: str | None = None
    previous_response_id: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    store: bool | None = None
    metadata: dict[str, str] | None = None
    truncation: Literal["disabled"] | None = None
    parallel_tool_calls: bool | None = None

    @model_validator(mode="after")
    def _some_input(self) -> "ResponsesRequest":
        if not self.input:
            raise ValueError("input must not be empty")
        return self


def parse(model: type[BaseModel], body: bytes) -> Any:
    """The validated request, or InvalidRequest naming the first problems (malformed JSON included)."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False)[:3]:
            where = ".".join(str(part) for part in error["loc"])
            problems.append(f"{where}: {error['msg']}" if where else error["msg"])
        raise InvalidRequest("; ".join(problems)) from None


def text_of(content: str | list[TextPart] | None) -> str:
    """A message's content as one string (text parts joined)."""
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(part.text for part in content)

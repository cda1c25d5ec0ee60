"""Text out of token ids as they stream: incremental detokenization that never splits a character.

A token need not end on a character boundary: byte-level vocabularies cut multi-byte UTF-8
characters (accents, CJK, emoji) across tokens, and decoding such a prefix yields U+FFFD in place
of the incomplete bytes. `IncrementalDecoder` therefore emits text only once the decoded window
is stable: it decodes the tokens since the last emission together with a little context before
them, and holds the text back while it ends with a replacement character.

Works with any tokenizer that has `decode(ids, skip_special_tokens=...)` (e.g. transformers');
this module imports nothing beyond the standard library.
"""

from __future__ import annotations

from typing import Any, AsyncIterable, AsyncIterator, Iterable

REPLACEMENT_CHARACTER = "\ufffd"


class IncrementalDecoder:
    """Feed token ids one at a time with `push`; it returns the text that became final.

    The concatenation of everything `push` and `flush` return equals decoding all the ids at
    once. Two offsets delimit the window (the scheme common to streaming servers):
    `_prefix_offset..._read_offset` is already-emitted context and `_read_offset...` is pending.
    Decoding with context matters for tokenizers whose decoders treat the first token specially
    (SentencePiece drops a leading space), so a window is never decoded on its own.
    """

    def __init__(self, tokenizer: Any, *, skip_special_tokens: bool = False) -> None:
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0

    @property
    def token_ids(self) -> list[int]:
        """Every id pushed so far."""
        return list(self._ids)

    def push(self, token_id: int) -> str:
        """Adds one id; returns the newly final text, "" while a character is still incomplete."""
        self._ids.append(token_id)
        return self._emit(final=False)

    def extend(self, token_ids: Iterable[int]) -> str:
        return "".join(self.push(token_id) for token_id in token_ids)

    def flush(self) -> str:
        """Returns whatever is still held back (an incomplete character decodes to U+FFFD here)."""
        return self._emit(final=True)

    def _emit(self, *, final: bool) -> str:
        if self._read_offset == len(self._ids):
            return ""
        context = self._decode(self._ids[self._prefix_offset:self._read_offset])
        window = self._decode(self._ids[self._prefix_offset:])
        # Still mid-character, or the new ids decoded to nothing yet (a special token being
        # skipped, or bytes a decoder merges later): wait for more ids.
        if not final and (window.endswith(REPLACEMENT_CHARACTER) or len(window) <= len(context)):
            return ""
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        return window[len(context):]

    def _decode(self, ids: list[int]) -> str:
        if not ids:
            return ""
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip_special_tokens)


async def stream_text(tokens: AsyncIterable[int], tokenizer: Any, *,
                      skip_special_tokens: bool = False) -> AsyncIterator[str]:
    """Yields text pieces from a stream of token ids (e.g. `session.generate(...)`).

    Pieces never split a character and never carry a trailing replacement character. Leaving
    the `async for` early cancels a GenerationStream, as leaving the stream itself would.
    """
    decoder = IncrementalDecoder(tokenizer, skip_special_tokens=skip_special_tokens)
    try:
        async for token_id in tokens:
            text = decoder.push(token_id)
            if text:
                yield text
        tail = decoder.flush()
        if tail:
            yield tail
    finally:
        cancel = getattr(tokens, "cancel", None)
        if callable(cancel):
            cancel()  # a no-op once the stream has finished

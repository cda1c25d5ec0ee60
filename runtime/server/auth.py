"""API keys: `authorization: Bearer <key>` on every RPC, and the owner identity sessions are bound to."""

from __future__ import annotations

import hashlib
from typing import Iterable, Sequence

from kakeya.runtime.common.errors import Unauthenticated

NO_OWNER = ""  # with no keys configured, every caller is the same owner


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeys:
    """Keeps only digests of the keys; an owner is identified by its key's digest prefix."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = frozenset(_digest(k) for k in keys)

    @property
    def is_enabled(self) -> bool:
        return bool(self._digests)

    def identify(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> str:
        """The caller's owner id, or Unauthenticated. Open when no keys are configured."""
        if not self._digests:
            return NO_OWNER
        for name, value in metadata or ():
            if name == "authorization":
                text = value.decode() if isinstance(value, bytes) else value
                scheme, _, token = text.partition(" ")
                if scheme.lower() == "bearer" and token:
                    digest = _digest(token.strip())
                    if digest in self._digests:
                        return digest[:32]
                raise Unauthenticated("the API key is not valid")
        raise Unauthenticated("an API key is required: send 'authorization: Bearer <key>' metadata")

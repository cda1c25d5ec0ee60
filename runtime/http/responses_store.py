"""Responses bound to the sessions that produced them, for `previous_response_id`."""

from __future__ import annotations

import collections
from array import array
from dataclasses import dataclass
from typing import Sequence

from .errors import ResponseNotFound

# Records are small (the session's ids at 4 bytes a token) but one a response: keep the newest.
MAX_RECORDS = 4096


@dataclass(frozen=True, slots=True)
class ResponseRecord:
    owner: str
    session_id: str
    history: array  # the session's tokens right after this response
    pending: tuple[int, ...]  # end-of-turn ids the model did not emit, owed before the next turn


class ResponseStore:
    def __init__(self, max_records: int = MAX_RECORDS) -> None:
        self._records: collections.OrderedDict[str, ResponseRecord] = collections.OrderedDict()
        self._max = max_records

    def __len__(self) -> int:
        return len(self._records)

    def put(self, response_id: str, owner: str, session_id: str, history: Sequence[int],
            pending: Sequence[int]) -> None:
        self._records[response_id] = ResponseRecord(owner, session_id, array("i", history), tuple(pending))
        while len(self._records) > self._max:
            self._records.popitem(last=False)

    def get(self, response_id: str, owner: str) -> ResponseRecord:
        """The record; another API key's answers exactly like an unknown one."""
        record = self._records.get(response_id)
        if record is None or record.owner != owner:
            shown = response_id if len(response_id) <= 64 else response_id[:32] + "..."
            raise ResponseNotFound(f"no response {shown!r} (unknown, or its session was evicted)")
        return record

    def forget(self, response_id: str) -> None:
        self._records.pop(response_id, None)

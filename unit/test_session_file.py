"""The durable session file's records: replay, a torn tail, corruption, and whole rewrites (no model)."""

from __future__ import annotations

import pytest
import torch

from kakeya.runtime.engine.session_file import HEADER, CorruptFile, encode, replay, state_record
from kakeya.runtime.engine.session_snapshot import KVImage

LANES, ROW_BYTES, SINK = 6, 8, 0
HEADER_META = {"lanes": LANES, "row_bytes": ROW_BYTES, "sink_tokens": SINK, "session_id": "s"}


def _rows(first: int, count: int) -> torch.Tensor:
    """KV rows whose bytes say which row they are: row r of every lane is filled with r."""
    rows = torch.arange(first, first + count, dtype=torch.uint8).view(1, count, 1).expand(LANES, count, ROW_BYTES)
    return rows.contiguous().reshape(-1)


def _image(positions: int, first: int) -> KVImage:
    return KVImage(positions, SINK, first, positions - first, _rows(first, positions - first))


def _file() -> tuple[bytes, list[int]]:
    history = list(range(100, 112))
    raw = encode(HEADER, HEADER_META)
    raw += state_record(tuple(history[:5]), 0, 0, 0, None)  # appended, nothing fed
    raw += state_record(tuple(history[:9]), 5, 8, 0, _image(8, 0))  # a Generate: 8 fed, 1 pending
    raw += state_record(tuple(history), 9, 11, 0, _image(11, 8))  # the next one adds rows 8..10
    return raw, history


def test_replay_rebuilds_history_and_kv_rows():
    raw, history = _file()
    got = replay(raw)
    assert got.history == tuple(history) and got.num_fed == 11 and got.good_bytes == len(raw)
    assert got.image.num_positions == 11 and got.image.rows == 11
    assert torch.equal(got.image.data, _rows(0, 11))
    assert got.header["session_id"] == "s"


def test_a_torn_last_record_is_dropped():
    raw, history = _file()
    extra = state_record(tuple(history + [5, 6]), 12, 11, 0, None)
    got = replay(raw + extra[: len(extra) - 10])
    assert got.history == tuple(history) and got.good_bytes == len(raw)


def test_a_flipped_byte_or_a_missing_header_is_corrupt():
    raw, _ = _file()
    for at in (len(raw) // 2, len(raw) - 1, 3):
        damaged = bytearray(raw)
        damaged[at] ^= 0x40
        with pytest.raises(CorruptFile):
            replay(bytes(damaged))
    with pytest.raises(CorruptFile):
        replay(raw[len(encode(HEADER, HEADER_META)):])


def test_rows_that_do_not_continue_are_corrupt_and_a_rewrite_starts_over():
    history = tuple(range(20))
    base = encode(HEADER, HEADER_META) + state_record(history[:8], 0, 8, 0, _image(8, 0))
    with pytest.raises(CorruptFile):  # rows 10.. after rows 0..7: rows 8 and 9 are missing
        replay(base + state_record(history[:12], 8, 12, 0, KVImage(12, SINK, 10, 2, _rows(10, 2))))
    rewritten = replay(base + state_record(history[:12], 8, 12, 0, _image(12, 0)))  # all rows again
    assert rewritten.image.rows == 12 and torch.equal(rewritten.image.data, _rows(0, 12))

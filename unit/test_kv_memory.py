"""KVShape / SessionKV / KVPool: byte accounting, block growth, trims, the budget, and bounded-mode compaction.

The pool's used_bytes is what admission control trusts, so it must equal the bytes the slabs
actually hold; compaction must move exactly the tokens a future query can still see.
"""

from __future__ import annotations

import pytest
import torch

from kakeya.runtime.common.errors import Overloaded
from kakeya.runtime.engine.kv_pool import KVPool
from kakeya.runtime.forward.session_kv import KVShape

CPU = torch.device("cpu")
SHAPE = KVShape(num_layers=2, num_kv_heads=2, head_dim=4, dtype=torch.float32, device=CPU)
PER_TOKEN = 2 * 2 * 2 * 4 * 4  # layers * (k|v) * heads * head_dim * 4 bytes


def pool(budget_tokens: int = 1000, block: int = 16, sink: int = 0, window: int = 0, chunk: int = 8) -> KVPool:
    return KVPool(SHAPE, budget_tokens * PER_TOKEN, block, sink, window, chunk)


def slab_bytes(kvs) -> int:
    return sum(kv.slab.numel() * kv.slab.element_size() for kv in kvs if kv.slab is not None)


def test_bytes_per_token():
    assert SHAPE.bytes_per_token == PER_TOKEN == 128
    assert KVShape(32, 8, 128, torch.bfloat16, CPU).bytes_per_token == 32 * 2 * 8 * 128 * 2
    assert KVShape(1, 1, 1, torch.float16, CPU).bytes_per_token == 4


def test_reserve_grows_in_whole_blocks_and_accounts_exactly():
    p = pool(block=16)
    a, b = p.allocate(), p.allocate()
    assert a.capacity == 0 and a.nbytes == 0 and p.used_bytes == 0 and p.num_slabs == 2
    for kv, total, capacity in ((a, 1, 16), (a, 16, 16), (a, 17, 32), (b, 40, 48), (a, 5, 32), (b, 48, 48)):
        p.reserve(kv, total)
        assert kv.capacity == capacity
        assert kv.slab.shape == (2, 2, 2, capacity, 4)
        assert p.used_bytes == slab_bytes((a, b)) == (a.capacity + b.capacity) * PER_TOKEN
    assert p.free_bytes == p.budget_bytes - p.used_bytes


def test_bytes_needed_matches_reserve():
    p = pool(block=16)
    kv = p.allocate()
    assert p.bytes_needed(kv, 20) == 32 * PER_TOKEN
    p.reserve(kv, 20)
    assert p.bytes_needed(kv, 32) == 0
    assert p.bytes_needed(kv, 33) == 16 * PER_TOKEN


def test_growth_keeps_resident_tokens():
    p = pool(block=4)
    kv = p.allocate()
    p.reserve(kv, 4)
    kv.slab.copy_(torch.arange(kv.slab.numel(), dtype=torch.float32).view_as(kv.slab))
    kv.num_positions = 4
    before = kv.slab.clone()
    p.reserve(kv, 9)
    assert kv.capacity == 12
    assert torch.equal(kv.slab[..., :4, :], before)


def test_reserve_beyond_budget_raises_and_changes_nothing():
    p = pool(budget_tokens=48, block=16)
    a, b = p.allocate(), p.allocate()
    p.reserve(a, 32)
    slab, used = a.slab, p.used_bytes
    with pytest.raises(Overloaded):
        p.reserve(b, 17)  # needs 32 tokens, 16 free
    assert b.slab is None and b.capacity == 0
    with pytest.raises(Overloaded):
        p.reserve(a, 49)
    assert a.slab is slab and a.capacity == 32
    assert p.used_bytes == used == slab_bytes((a, b))
    p.reserve(b, 16)  # exactly the rest of the budget fits
    assert p.free_bytes == 0


def test_free_returns_the_bytes_and_twice_is_harmless():
    p = pool(block=16)
    a, b = p.allocate(), p.allocate()
    p.reserve(a, 10), p.reserve(b, 30)
    p.free(a)
    assert a.slab is None and p.num_slabs == 1
    assert p.used_bytes == b.nbytes == 32 * PER_TOKEN
    p.free(a)
    assert p.used_bytes == 32 * PER_TOKEN and p.num_slabs == 1
    p.free(b)
    assert p.used_bytes == 0 and p.num_slabs == 0


def test_trim_gives_back_an_unused_reservation_and_keeps_the_held_tokens():
    """A request reserved 300 tokens and ended at 40: the slab keeps 40 and a quarter, in blocks."""
    p = pool(block=16)
    kv = p.allocate()
    p.reserve(kv, 300)
    assert kv.capacity == 304
    kv.slab.copy_(torch.arange(kv.slab.numel(), dtype=torch.float32).view_as(kv.slab))
    kv.num_positions = 40
    before = kv.slab[..., :40, :].clone()
    p.trim(kv, 40)
    assert kv.capacity == 64  # 40 + 10, rounded up to 16-token blocks
    assert torch.equal(kv.slab[..., :40, :], before)
    assert p.used_bytes == slab_bytes((kv,)) == 64 * PER_TOKEN
    assert kv.used_bytes == p.used_positions_bytes() == 40 * PER_TOKEN


@pytest.mark.parametrize("keep, capacity", [(60, 112), (40, 112), (30, 48), (0, 16)])
def test_trim_leaves_a_slab_that_holds_at_most_twice_its_need(keep, capacity):
    """112 tokens held: kept for a need of 60 (80) or 40 (64), trimmed for 30 (48) or an empty history."""
    p = pool(block=16)
    kv = p.allocate()
    p.reserve(kv, 100)
    kv.num_positions = keep
    slab = kv.slab
    p.trim(kv, keep)
    assert kv.capacity == capacity and (kv.slab is slab) == (capacity == 112)
    assert p.used_bytes == capacity * PER_TOKEN


def test_a_conversation_that_uses_what_it_reserves_is_never_copied_by_a_trim():
    """Turns of append 64 + generate 32, every token used: trims never move the slab, and
    reserves grow it geometrically (fewer copies than turns)."""
    p = pool(budget_tokens=100_000, block=16)
    kv = p.allocate()
    history, growths = 0, 0
    for _ in range(100):
        slab = kv.slab
        p.reserve(kv, history + 64 + 32)
        growths += kv.slab is not slab
        history += 64 + 32
        kv.num_positions = history - 1  # the last sampled token is pending
        slab = kv.slab
        p.trim(kv, history)
        assert kv.slab is slab
    assert growths <= 20  # a quarter more each time: about log(100) / log(1.25) growths


def test_trim_shrinks_the_draft_slab_with_its_session():
    draft_shape = KVShape(num_layers=1, num_kv_heads=1, head_dim=4, dtype=torch.float32, device=CPU)
    p = KVPool(SHAPE, 1000 * PER_TOKEN, 16, 0, 0, 8, draft_shape)
    kv = p.allocate()
    p.reserve(kv, 200)
    kv.num_positions, kv.draft.num_positions = 20, 18
    p.trim(kv, 21)
    assert kv.capacity == kv.draft.capacity == 32
    assert p.used_bytes == slab_bytes((kv, kv.draft)) == kv.lease_bytes
    assert kv.used_bytes == 20 * PER_TOKEN + 18 * draft_shape.bytes_per_token


@pytest.mark.parametrize("block, expected", [(8, 32), (16, 32), (10, 30), (1, 28), (64, 64)])
def test_bounded_pool_caps_capacity(block, expected):
    """sink 4 + window 16 + chunk 8 = 28 tokens, rounded up to whole blocks, whatever is asked."""
    p = pool(block=block, sink=4, window=16, chunk=8)
    assert p.bounded_capacity == expected
    kv = p.allocate()
    p.reserve(kv, 10_000)
    assert kv.capacity == expected and p.used_bytes == expected * PER_TOKEN
    assert p.bytes_needed(kv, 1_000_000) == 0
    assert pool(block=block).bounded_capacity is None


def positions_slab(kv) -> None:
    """Fills storage index i with the value i (every layer, k and v, head, dim)."""
    idx = torch.arange(kv.capacity, dtype=torch.float32)
    kv.slab.copy_(idx.view(1, 1, 1, -1, 1).expand_as(kv.slab))


def test_compact_for_compacts_the_window_after_the_sinks():
    p = pool(block=8, sink=4, window=16, chunk=8)
    kv = p.allocate()
    p.reserve(kv, 100)
    assert kv.capacity == 32
    positions_slab(kv)  # no compaction yet: storage index == position
    kv.num_positions = 32
    assert kv.num_resident == 32 and kv.storage_index(31) == 31

    kv.compact_for(1)
    # The next query (position 32) sees sinks 0..3 and positions 17..32: keep 17..31.
    assert kv.window_start == 17 == kv.first_visible(32)
    assert kv.num_resident == 4 + 15 and kv.num_evicted == 13
    values = kv.slab[0, 0, 0, :, 0]
    assert values[:4].tolist() == [0, 1, 2, 3]  # sinks untouched
    assert values[4:19].tolist() == list(range(17, 32))  # window moved right after them
    assert (kv.slab[..., :19, :] == values[:19].view(1, 1, 1, 19, 1)).all()  # in every layer, k|v, head
    for position in range(17, 32):
        assert values[kv.storage_index(position)] == position
    assert kv.storage_index(2) == 2 and kv.storage_index(32) == 19


def test_compact_for_is_a_no_op_while_there_is_room():
    p = pool(block=8, sink=4, window=16, chunk=8)
    kv = p.allocate()
    p.reserve(kv, 100)
    positions_slab(kv)
    kv.num_positions = 24
    before = kv.slab.clone()
    kv.compact_for(8)
    assert kv.window_start == 4 and torch.equal(kv.slab, before)


def test_compact_for_refuses_what_cannot_fit():
    p = pool(block=8, sink=4, window=16, chunk=8)
    kv = p.allocate()
    p.reserve(kv, 100)
    kv.num_positions = 32
    kv.compact_for(13)  # compacts to 19 resident: 19 + 13 == 32
    assert kv.window_start == 17
    with pytest.raises(Overloaded):
        kv.compact_for(14)  # nothing more can be dropped


def test_full_attention_slab_never_compacts():
    p = pool(block=16)
    kv = p.allocate()
    p.reserve(kv, 16)
    kv.num_positions = 16
    with pytest.raises(Overloaded):
        kv.compact_for(1)
    assert kv.window_start == 0 and kv.num_resident == 16 and kv.first_visible(1000) == 0


@pytest.mark.parametrize("sink", [0, 1])
def test_window_of_one_drops_every_non_sink_token(sink):
    p = pool(block=1, sink=sink, window=1, chunk=1)
    kv = p.allocate()
    p.reserve(kv, 100)
    assert kv.capacity == sink + 2
    kv.num_positions = sink + 2  # full: the sinks and two window tokens
    kv.compact_for(1)
    # Position sink + 2 attends to the sinks and itself only: nothing else stays resident.
    assert kv.window_start == sink + 2
    assert kv.num_resident == sink
    assert kv.storage_index(sink + 2) == sink

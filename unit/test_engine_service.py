"""The engine process's side of the boundary, driven in this process: KV operations between
steps, and steps run ahead of the front's plans and undone when the front plans otherwise."""

from __future__ import annotations

import torch

from kakeya.runtime.common.config import RuntimeConfig
from kakeya.runtime.engine.assembly import build_engine
from kakeya.runtime.engine.sampler import SamplingParams
from kakeya.runtime.engine.service import EngineService
from kakeya.runtime.engine.step import RowStop, StopRule
from kakeya.runtime.engine.step_ahead import MAX_AHEAD
from kakeya.runtime.engine.wire import StepMessage, WireRow, continuation

from tiny_models import load_tiny


def _service(step_ahead: bool = True) -> EngineService:
    loaded, _ = load_tiny("llama")
    local = build_engine(RuntimeConfig(), loaded, None, None, None)
    return EngineService(local.engine, local.facts, 0, 0, step_ahead=step_ahead)


def _open(service: EngineService, kv_id: int, key: int, capacity: int = 64) -> None:
    service.apply((("resize", kv_id, False, capacity), ("sampler", key, SamplingParams())))


def _tokens_planned(service: EngineService, rows: tuple[WireRow, ...], steps: int) -> list[tuple]:
    """Each step planned by a front that waits for every reply (no step ahead)."""
    out = []
    for _ in range(steps):
        reply = service.step(StepMessage((), rows), -1.0)
        out.append(tuple(row.tokens for row in reply.rows))
        rows = continuation(rows, reply.rows)
    return out


def test_steps_run_ahead_are_the_steps_the_front_would_plan():
    prompts = {1: (5, 6, 7, 8), 2: (9, 10)}
    rows = tuple(WireRow(kv_id, prompt, kv_id, stop=StopRule(frozenset(), 20)) for kv_id, prompt in prompts.items())
    planned = _service(step_ahead=False)
    ahead = _service()
    for service in (planned, ahead):
        for kv_id in prompts:
            _open(service, kv_id, kv_id)
    expected = _tokens_planned(planned, rows, 1 + MAX_AHEAD)
    first = ahead.step(StepMessage((), rows), -1.0)
    assert first.runs_ahead and not first.ahead
    got = [tuple(row.tokens for row in first.rows)]
    for _ in range(MAX_AHEAD):
        assert ahead.ahead.can_step
        reply = ahead.step_ahead(0.0)
        assert reply.ahead
        got.append(tuple(row.tokens for row in reply.rows))
    assert not ahead.ahead.can_step  # at most MAX_AHEAD steps past what the front took
    assert got == expected
    ahead.ahead.taken(1)
    assert ahead.ahead.can_step


def test_a_plan_undoes_every_step_the_front_did_not_take():
    service = _service()
    _open(service, 1, 1)
    rows = (WireRow(1, (5, 6, 7), 1, stop=StopRule(frozenset(), 20)),)
    first = service.step(StepMessage((), rows), -1.0)
    assert first.rows[0].num_positions == 3
    service.step_ahead(0.0)
    service.ahead.taken(1)  # the front took one step run ahead
    service.step_ahead(0.0)  # and not this one
    taken_positions = 4
    # The front plans a cancel-and-restart instead: the session feeds a new token at its positions.
    replan = (WireRow(1, (11,), 1, stop=StopRule(frozenset(), 5)),)
    reply = service.step(StepMessage((), replan), -1.0)
    assert reply.rows[0].num_positions == taken_positions + 1
    # The same as a session that never ran ahead: positions and the token sampled after them.
    fresh = _service(step_ahead=False)
    _open(fresh, 1, 1)
    start = fresh.step(StepMessage((), rows), -1.0)
    fed = continuation(rows, start.rows)
    taken = fresh.step(StepMessage((), fed), -1.0)
    assert taken.rows[0].num_positions == taken_positions
    again = fresh.step(StepMessage((), replan), -1.0)
    assert again.rows[0].tokens == reply.rows[0].tokens


def test_a_stop_ends_the_row_and_nothing_after_it_runs():
    service = _service()
    _open(service, 1, 1)
    rows = (WireRow(1, (5, 6), 1, stop=StopRule(frozenset(), 2)),)
    first = service.step(StepMessage((), rows), -1.0)
    assert first.runs_ahead
    last = service.step_ahead(0.0)
    assert last.rows[0].stop is RowStop.MAX_TOKENS and not last.runs_ahead
    assert not service.ahead.can_step


def test_kv_operations_allocate_resize_and_free_slabs_by_id():
    service = _service()
    service.apply((("resize", 7, False, 32), ("resize", 7, False, 64)))
    assert service.num_slabs == 1
    service.apply((("free", 7), ("free", 7)))
    assert service.num_slabs == 0


def test_sampling_rows_never_run_ahead():
    service = _service()
    service.apply((("resize", 1, False, 64), ("sampler", 9, SamplingParams(temperature=0.7, seed=1))))
    reply = service.step(StepMessage((), (WireRow(1, (5, 6), 9, stop=StopRule(frozenset(), 20)),)), -1.0)
    assert not reply.runs_ahead and not service.ahead.can_step


def test_the_front_pool_queues_each_resize_and_free_as_a_kv_operation():
    from kakeya.runtime.engine.kv_pool import KVPool
    from kakeya.runtime.engine.remote_kv import KVOps, remote_kv_factory

    service = _service()
    facts = service._facts
    ops = KVOps()
    flushes = []
    ops.send_now = lambda: flushes.append(len(ops))
    pool = KVPool(facts.kv_shape, 1 << 30, 16, 0, 0, 64, facts.draft_shape, remote_kv_factory(ops))
    kv = pool.allocate()
    pool.reserve(kv, 40)
    assert kv.capacity == 48 and kv.slab is None  # accounts only: the slab is in the engine
    assert pool.used_bytes == 48 * facts.kv_shape.bytes_per_token
    queued = ops.drain()
    assert queued == (("resize", kv.kv_id, False, 48),)
    service.apply(queued)
    reply = service.step(StepMessage((), (WireRow(kv.kv_id, (5, 6, 7), None),)), -1.0)
    kv.set_state(reply.rows[0].num_positions, reply.rows[0].window_start)
    assert kv.num_resident == 3 and pool.used_positions_bytes() == 3 * facts.kv_shape.bytes_per_token
    pool.free(kv)
    assert pool.used_bytes == 0 and flushes == [1]
    service.apply(ops.drain())
    assert service.num_slabs == 0


def test_a_fork_an_export_and_an_import_of_a_handle_are_made_in_the_engine():
    """Over handles, fork_kv queues a copy, write_kv queues the rows (sent at once), and read_kv asks
    the engine: the engine's slabs then hold exactly the source's rows, and a continued step
    samples the same token from each."""
    from kakeya.runtime.engine.kv_pool import KVPool
    from kakeya.runtime.engine.remote_kv import KVOps, remote_kv_factory
    from kakeya.runtime.engine.session_snapshot import fork_kv, image_from_bytes, read_kv, write_kv
    from kakeya.runtime.engine.wire import KVRows, ReadKV

    service = _service(step_ahead=False)
    facts = service._facts
    ops = KVOps()
    sent = []
    ops.send_now = lambda: sent.append(len(ops))
    ops.read = lambda kv_id, first_row: image_from_bytes(*service.read(ReadKV(ops.drain(), kv_id, first_row)))
    pool = KVPool(facts.kv_shape, 1 << 30, 16, 0, 0, 64, facts.draft_shape, remote_kv_factory(ops))
    source = pool.allocate()
    pool.reserve(source, 20)
    service.apply(ops.drain() + (("sampler", 3, SamplingParams()),))
    reply = service.step(StepMessage((), (WireRow(source.kv_id, tuple(range(5, 17)), 3),)), -1.0)
    source.set_state(reply.rows[0].num_positions, reply.rows[0].window_start)

    fork = fork_kv(pool, source)
    assert fork.num_positions == source.num_positions == 12
    assert ops._queue[-1] == ("copy", source.kv_id, fork.kv_id)
    image = read_kv(source)  # the queued copy is applied first, then the source read
    assert (image.num_positions, image.rows) == (12, 12)
    assert image.data.numel() == 12 * facts.kv_shape.bytes_per_token
    moved = write_kv(pool, image)
    assert sent == [2] and moved.num_positions == 12  # its resize and its rows, sent at once
    service.apply(ops.drain())
    for kv in (fork, moved):
        assert torch.equal(read_kv(kv).data, image.data)
    tokens = {kv.kv_id: service.step(StepMessage((), (WireRow(kv.kv_id, (17,), 3),)), -1.0).rows[0].tokens
              for kv in (source, fork, moved)}
    assert len(set(tokens.values())) == 1
    assert service.read(ReadKV((), 999, 0)) == KVRows(0, 0, 0, 0, b"")  # a slab the engine never made

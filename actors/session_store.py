"""Durable sessions: one append-only file per session under --session-dir (format: session_file.py).

A session's journal appends one record after each completed request, before the request's
reply, and fsyncs it, so a reply the client saw is on disk. A write that fails (a full disk, an
unwritable directory) is counted (kakeya_session_store_errors{op="write"}) and logged, and the
request succeeds anyway; the journal then rewrites its file whole at the next request (into a
temporary file renamed over it), since the failed append may have left part of a record. Files
are created 0600 and name the owner (API-key identity) they are bound to. A session closed by its
client, its TTL or eviction loses its file; a server shutdown keeps it for the next start.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
from dataclasses import dataclass

import structlog

from kakeya.runtime.common.metrics import Metrics
from kakeya.runtime.engine.session_file import HEADER, SUFFIX, CorruptFile, encode, replay, state_record
from kakeya.runtime.engine.session_snapshot import KVImage, read_kv

from .messages import KVLease
from .scheduler import SchedulerActor
from .session_state import SessionState, slab_op

log = structlog.get_logger(__name__)

FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class Restored:
    """A session read back from its file at start."""

    session_id: str
    owner: str
    client_label: str
    eos_token_ids: frozenset[int]
    state: SessionState
    image: KVImage


class Journal:
    """One session's file; its session actor is its only writer."""

    def __init__(self, store: SessionStore, session_id: str, header: dict) -> None:
        self._store = store
        self.session_id = session_id
        self.path = store.directory / f"{session_id}{SUFFIX}"
        self._header = header
        self._history = 0  # history tokens on disk
        self._rows = 0  # KV rows on disk, and the window they were written under
        self._window: int | None = None
        self._rewrite = True  # no file yet, or one that a failed write may have left torn

    def resume(self, state: SessionState, image: KVImage) -> None:
        """The file already holds this state (a session restored from it)."""
        self._history, self._rows, self._window = len(state.history), image.rows, image.window_start
        self._rewrite = False

    async def record(self, state: SessionState, lease: KVLease | None) -> None:
        """Appends the state's news since the last record; never raises."""
        try:
            image = None
            if lease is not None:
                first, window = (0, None) if self._rewrite else (self._rows, self._window)
                image = await slab_op(self._store.scheduler, lambda pool: read_kv(
                    lease.kv, first if lease.kv.window_start == window else 0))
            start = 0 if self._rewrite else self._history
            if not self._rewrite and start == len(state.history) and (image is None or not image.rows):
                return
            blob = state_record(state.history, start, state.num_fed, state.reported_dropped, image)
            header = encode(HEADER, self._header) if self._rewrite else b""
            await asyncio.to_thread(_write, self.path, header + blob, self._rewrite)
        except Exception as exc:  # noqa: BLE001 - a disk problem must not fail the request
            self._rewrite = True
            self._store.failed("write", self.path, exc)
            return
        self._store.metrics.session_store_bytes.inc(len(header) + len(blob))
        self._history, self._rewrite = len(state.history), False
        if image is not None:
            self._rows, self._window = image.first_row + image.rows, image.window_start

    async def remove(self) -> None:
        try:
            await asyncio.to_thread(self.path.unlink, missing_ok=True)
        except OSError as exc:
            self._store.failed("remove", self.path, exc)


class SessionStore:
    def __init__(self, directory: str, fingerprint: str, settings: dict, scheduler: SchedulerActor,
                 metrics: Metrics) -> None:
        self.directory = pathlib.Path(directory)
        self.fingerprint = fingerprint
        self.settings = settings  # kv_dtype, sink_tokens, window_tokens, lanes, row_bytes
        self.scheduler = scheduler
        self.metrics = metrics

    def journal(self, session_id: str, owner: str, client_label: str, eos_token_ids: frozenset[int]) -> Journal:
        header = {"format_version": FORMAT_VERSION, "session_id": session_id, "owner": owner,
                  "client_label": client_label, "eos_token_ids": sorted(eos_token_ids),
                  "model_fingerprint": self.fingerprint, **self.settings}
        return Journal(self, session_id, header)

    def failed(self, op: str, path: pathlib.Path, exc: BaseException) -> None:
        self.metrics.session_store_errors.labels(op).inc()
        log.error("session_store_failed", op=op, path=str(path), error=repr(exc))

    def load_all(self) -> list[Restored]:
        """Every session file's session (blocking: run it off the event loop). A corrupt file is
        renamed *.corrupt and loses its session; a file of another model or settings is left alone."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            paths = sorted(self.directory.glob(f"*{SUFFIX}"), key=lambda p: p.stat().st_mtime)
        except OSError as exc:
            self.failed("load", self.directory, exc)
            return []
        restored = []
        for path in paths:
            try:
                restored.append(self._load(path))
            except _Foreign as exc:
                log.warning("session_file_foreign", path=str(path), reason=str(exc))
            except (CorruptFile, OSError, KeyError, TypeError, ValueError) as exc:
                self.failed("load", path, exc)
                log.error("session_file_corrupt", path=str(path), session_id=path.stem, error=str(exc))
                _set_aside(path)
        return restored

    def _load(self, path: pathlib.Path) -> Restored:
        raw = path.read_bytes()
        got = replay(raw)
        header = got.header
        if header.get("model_fingerprint") != self.fingerprint or any(
                header.get(key) != value for key, value in self.settings.items()):
            raise _Foreign("another model or other KV settings")
        if header["session_id"] != path.stem:
            raise CorruptFile(f"the file names session {header['session_id']!r}")
        if got.good_bytes != len(raw):
            log.warning("session_file_torn_tail", path=str(path), dropped_bytes=len(raw) - got.good_bytes)
            os.truncate(path, got.good_bytes)
        state = SessionState(got.history, got.num_fed, got.reported_dropped)
        return Restored(header["session_id"], header["owner"], header["client_label"],
                        frozenset(header["eos_token_ids"]), state, got.image)


class _Foreign(Exception):
    pass


def _write(path: pathlib.Path, data: bytes, whole: bool) -> None:
    """Appends data and fsyncs; `whole` writes a new file instead, renamed over the old one."""
    target = path.with_suffix(".tmp") if whole else path
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if whole else os.O_APPEND)
    fd = os.open(target, flags, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    if whole:
        os.replace(target, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def _set_aside(path: pathlib.Path) -> None:
    try:
        path.rename(path.with_name(path.name + ".corrupt"))
    except OSError:
        pass

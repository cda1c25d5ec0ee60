"""Prometheus metrics of sessions and the scheduler, on a registry of their own, served on loopback.

Names follow CONTRACT.md (session series) and vLLM's meanings (scheduler series), prefixed
`kakeya_`, in base units. Ids never become labels. Observed per step and per lifecycle event.
"""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 65536)
_SESSIONS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# Steps and their crossings of the process boundary: from 50 microseconds.
_STEP_SECONDS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """Every collector the runtime exports. Each is written by one owner (named in its help)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._add_session_metrics()
        self._add_scheduler_metrics()
        self._add_speculative_metrics()
        self._add_engine_process_metrics()
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def _gauge(self, name: str, documentation: str) -> Gauge:
        return Gauge(name, documentation, registry=self.registry)

    def _counter(self, name: str, documentation: str, labels: tuple[str, ...] = ()) -> Counter:
        return Counter(name, documentation, labels, registry=self.registry)

    def _histogram(self, name: str, documentation: str, buckets: tuple[float, ...]) -> Histogram:
        return Histogram(name, documentation, buckets=buckets, registry=self.registry)

    def _add_session_metrics(self) -> None:
        """Written by the registry and the session actors."""
        self.session_active = self._gauge("kakeya_session_active", "Sessions currently open.")
        self.session_total = self._counter("kakeya_session", "Sessions ended, by outcome (closed, evicted, failed).",
                                           ("outcome",))
        self.session_evicted = self._counter("kakeya_session_evicted",
                                             "Sessions evicted, by reason (ttl, lru).", ("reason",))
        self.session_kv_live_bytes = self._gauge("kakeya_session_kv_live_bytes",
                                                 "Bytes of KV memory held by all sessions' slabs.")
        self.session_history_tokens = self._histogram("kakeya_session_history_tokens",
                                                      "History length of sessions when they end.", _TOKENS)
        self.generate_prefill_tokens = self._histogram("kakeya_generate_prefill_tokens",
                                                       "Tokens prefilled by one Generate (its new history).", _TOKENS)
        self.generate_prefill_duration = self._histogram("kakeya_generate_prefill_duration_seconds",
                                                         "From a Generate's start to its first token.", _SECONDS)
        self.session_store_errors = self._counter("kakeya_session_store_errors",
                                                  "Durable session files not written, read or removed, by "
                                                  "operation (write, load, remove).", ("op",))
        self.session_store_bytes = self._counter("kakeya_session_store_written_bytes",
                                                 "Bytes appended to durable session files.")
        self.invariant_violations = self._counter("kakeya_cache_invariant_violations",
                                                  "Cache invariant violations (inv1, inv2); each closed its session.",
                                                  ("kind",))

    def _add_scheduler_metrics(self) -> None:
        """Written by the scheduler actor."""
        self.running = self._gauge("kakeya_scheduler_running_requests", "Generates the scheduler is running.")
        self.waiting = self._gauge("kakeya_scheduler_waiting_requests",
                                   "Running Generates that got no rows in the last step (token budget full).")
        self.forwards = self._counter("kakeya_scheduler_forwards", "Batched forwards run.")
        self.batch_sessions = self._histogram("kakeya_scheduler_batch_sessions", "Sessions carried by one forward.",
                                              _SESSIONS)
        self.batch_tokens = self._histogram("kakeya_scheduler_batch_tokens", "Token rows in one forward.", _TOKENS)
        self.step_duration = self._histogram("kakeya_scheduler_step_duration_seconds",
                                             "Wall time of one scheduler step (forward and sampling).", _SECONDS)
        self.queue_time = self._histogram("kakeya_request_queue_time_seconds",
                                          "From a Generate's submission to its first scheduled rows.", _SECONDS)
        self.time_to_first_token = self._histogram("kakeya_request_time_to_first_token_seconds",
                                                   "From a Generate's submission to its first token.", _SECONDS)
        self.inter_token_latency = self._histogram("kakeya_request_inter_token_latency_seconds",
                                                   "Between consecutive tokens of one Generate.", _SECONDS)
        self.prompt_tokens = self._counter("kakeya_prompt_tokens", "Prefilled tokens (history fed to the model).")
        self.generation_tokens = self._counter("kakeya_generation_tokens", "Generated tokens.")
        self.stalled_consumers = self._counter("kakeya_stream_stalled",
                                               "Generates stopped because their consumer left tokens unread too long.")
        self.kv_usage_ratio = self._gauge("kakeya_kv_usage_ratio", "KV bytes in use over the KV budget.")
        self.kv_used_bytes = self._gauge("kakeya_kv_used_bytes", "Bytes of the KV positions sessions store.")
        self.kv_reserved_bytes = self._gauge("kakeya_kv_reserved_bytes", "KV bytes held for positions to come.")

    def _add_speculative_metrics(self) -> None:
        """Written by the scheduler actor, as vLLM's spec_decode series, and the model thread (run-ahead)."""
        self.spec_drafts = self._counter("kakeya_spec_decode_drafts", "Drafts verified (one per session and step).")
        self.spec_draft_tokens = self._counter("kakeya_spec_decode_draft_tokens", "Draft tokens verified.")
        self.spec_accepted_tokens = self._counter("kakeya_spec_decode_accepted_tokens",
                                                  "Draft tokens the verifier accepted.")
        # Per position in the draft (1 = first): accepted over drafted is that position's acceptance rate.
        self.spec_draft_per_position = self._counter("kakeya_spec_decode_draft_tokens_per_position",
                                                     "Draft tokens verified, by position in the draft.", ("position",))
        self.spec_accepted_per_position = self._counter("kakeya_spec_decode_accepted_tokens_per_position",
                                                        "Draft tokens accepted, by position in the draft.",
                                                        ("position",))
        # Run-ahead decoding (model thread, CUDA): a launched step is claimed, or dropped when the
        # scheduler asks for other rows (a session joined, a sampler has a temperature).
        self.run_ahead_steps = self._counter("kakeya_run_ahead_steps", "Decode steps launched ahead, by outcome.",
                                             ("outcome",))

    def _add_engine_process_metrics(self) -> None:
        """Written by the engine client (runtime/engine/client.py) when the engine runs in a process of
        its own: where a step's time goes on each side of the boundary."""
        self.engine_step_duration = self._histogram(
            "kakeya_engine_step_duration_seconds",
            "One step inside the engine process: KV operations, drafts, forward, sampling, stop rules.", _STEP_SECONDS)
        self.engine_front_wait = self._histogram(
            "kakeya_engine_front_wait_seconds",
            "Between two steps while requests run: how long the engine process waited for the next step.",
            _STEP_SECONDS)
        self.front_engine_wait = self._histogram(
            "kakeya_front_engine_wait_seconds",
            "How long the front waited for the engine process to answer a step (the step and both crossings).",
            _STEP_SECONDS)
        self.engine_steps_ahead = self._counter(
            "kakeya_engine_steps_ahead",
            "Steps the engine process ran on its own, by outcome: taken by the front, or undone by its next plan.",
            ("outcome",))

    def serve(self, host: str, port: int) -> int:
        """Starts the /metrics HTTP endpoint; returns the bound port."""
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        return self._server.server_port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

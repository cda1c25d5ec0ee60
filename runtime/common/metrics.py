"""Prometheus metrics of sessions and the scheduler, on a registry of their own, served on loopback.

Session series keep the names that the alerts and dashboard in ops/ read, scheduler series vLLM's
meanings; all are prefixed `kakeya_`, in base units. Ids never become labels. Observed per step and
per lifecycle event.
"""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 65536)
_SESSIONS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """Every collector the runtime exports. Each is written by one owner (named in its help)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        # Sessions (registry and session actors).
        self.session_active = Gauge("kakeya_session_active", "Sessions currently open.", registry=r)
        self.session_total = Counter("kakeya_session", "Sessions ended, by outcome (closed, evicted, failed).",
                                     ["outcome"], registry=r)
        self.session_evicted = Counter("kakeya_session_evicted", "Sessions removed, by reason (ttl, lru, close).",
                                       ["reason"], registry=r)
        self.session_kv_live_bytes = Gauge("kakeya_session_kv_live_bytes",
                                           "Bytes of KV memory held by all sessions' slabs.", registry=r)
        self.session_history_tokens = Histogram("kakeya_session_history_tokens",
                                                "History length of sessions when they end.", buckets=_TOKENS,
                                                registry=r)
        self.generate_prefill_tokens = Histogram("kakeya_generate_prefill_tokens",
                                                 "Tokens prefilled by one Generate (its new history).",
                                                 buckets=_TOKENS, registry=r)
        self.generate_prefill_duration = Histogram("kakeya_generate_prefill_duration_seconds",
                                                   "From a Generate's start to its first token.",
                                                   buckets=_SECONDS, registry=r)
        self.invariant_violations = Counter("kakeya_cache_invariant_violations",
                                            "Cache invariant violations (inv1, inv2); each closed its session.",
                                            ["kind"], registry=r)
        # Scheduler (scheduler actor).
        self.running = Gauge("kakeya_scheduler_running_requests", "Generates the scheduler is running.", registry=r)
        self.waiting = Gauge("kakeya_scheduler_waiting_requests",
                             "Running Generates that got no rows in the last step (token budget full).", registry=r)
        self.forwards = Counter("kakeya_scheduler_forwards", "Batched forwards run.", registry=r)
        self.batch_sessions = Histogram("kakeya_scheduler_batch_sessions", "Sessions carried by one forward.",
                                        buckets=_SESSIONS, registry=r)
        self.batch_tokens = Histogram("kakeya_scheduler_batch_tokens", "Token rows in one forward.",
                                      buckets=_TOKENS, registry=r)
        self.step_duration = Histogram("kakeya_scheduler_step_duration_seconds",
                                       "Wall time of one scheduler step (forward and sampling).",
                                       buckets=_SECONDS, registry=r)
        self.queue_time = Histogram("kakeya_request_queue_time_seconds",
                                    "From a Generate's submission to its first scheduled rows.",
                                    buckets=_SECONDS, registry=r)
        self.time_to_first_token = Histogram("kakeya_request_time_to_first_token_seconds",
                                             "From a Generate's submission to its first token.",
                                             buckets=_SECONDS, registry=r)
        self.inter_token_latency = Histogram("kakeya_request_inter_token_latency_seconds",
                                             "Between consecutive tokens of one Generate.",
                                             buckets=_SECONDS, registry=r)
        self.prompt_tokens = Counter("kakeya_prompt_tokens", "Prefilled tokens (history fed to the model).",
                                     registry=r)
        self.generation_tokens = Counter("kakeya_generation_tokens", "Generated tokens.", registry=r)
        self.stalled_consumers = Counter("kakeya_stream_stalled",
                                         "Generates stopped because their consumer left tokens unread too long.",
                                         registry=r)
        self.kv_usage_ratio = Gauge("kakeya_kv_usage_ratio", "KV bytes in use over the KV budget.", registry=r)
        self.kv_used_bytes = Gauge("kakeya_kv_used_bytes", "Bytes of the KV positions sessions store.", registry=r)
        self.kv_reserved_bytes = Gauge("kakeya_kv_reserved_bytes", "KV bytes held for positions to come.", registry=r)
        # Speculative decoding (scheduler actor), as vLLM's spec_decode series.
        self.spec_drafts = Counter("kakeya_spec_decode_drafts", "Drafts verified (one per session and step).",
                                   registry=r)
        self.spec_draft_tokens = Counter("kakeya_spec_decode_draft_tokens", "Draft tokens verified.", registry=r)
        self.spec_accepted_tokens = Counter("kakeya_spec_decode_accepted_tokens",
                                            "Draft tokens the verifier accepted.", registry=r)
        # Per position in the draft (1 = first): accepted over drafted is that position's acceptance rate.
        self.spec_draft_per_position = Counter("kakeya_spec_decode_draft_tokens_per_position",
                                               "Draft tokens verified, by position in the draft.", ["position"],
                                               registry=r)
        self.spec_accepted_per_position = Counter("kakeya_spec_decode_accepted_tokens_per_position",
                                                  "Draft tokens accepted, by position in the draft.", ["position"],
                                                  registry=r)
        # Run-ahead decoding (model thread, CUDA): a launched step is claimed, or dropped when the
        # scheduler asks for other rows (a session joined, a sampler has a temperature).
        self.run_ahead_steps = Counter("kakeya_run_ahead_steps", "Decode steps launched ahead, by outcome.",
                                       ["outcome"], registry=r)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def serve(self, host: str, port: int) -> int:
        """Starts the /metrics HTTP endpoint; returns the bound port."""
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        return self._server.server_port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

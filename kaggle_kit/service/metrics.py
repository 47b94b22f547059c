"""/metrics in the Prometheus text format: one registry per app, so several servers in one
process (tests, a notebook) never share counters."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)


class ServiceMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("kk_requests", "Chat completion requests by outcome", ["status", "strategy"], registry=r)
        self.latency = Histogram("kk_request_latency_seconds", "Time from request to the last byte",
                                 ["strategy"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("kk_queue_depth", "Requests waiting for the engine worker", registry=r)
        self.active_requests = Gauge("kk_active_requests", "Requests the worker is running", registry=r)
        self.active_sequences = Gauge("kk_active_sequences", "Sequences in the engine right now", registry=r)
        self.pending_sequences = Gauge("kk_pending_sequences", "Sequences waiting for an engine slot", registry=r)
        self.generated_tokens = Counter("kk_generated_tokens", "Tokens generated", registry=r)
        self.tts_rounds = Counter("kk_tts_rounds", "Rounds (engine calls) of TTS strategies", ["strategy"], registry=r)
        self.preemptions = Counter("kk_preemptions", "Sequences of big requests paused for interactive ones", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)

"""Prometheus metrics of one service instance (its own registry, so apps never share counts)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServiceMetrics:
    """Requests by route and status, latency, inference batch sizes, queue depth, images."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("featurebank_requests", "HTTP requests answered",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("featurebank_request_seconds", "Time to answer a request",
                                 ["route"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("featurebank_batch_size", "Images per inference call",
                                    buckets=_BATCH_BUCKETS, registry=self.registry)
        self.batch_seconds = Histogram("featurebank_batch_seconds", "Time of one inference call",
                                       buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("featurebank_queue_images",
                                 "Images accepted and not yet answered (decoding or queued)",
                                 registry=self.registry)
        self.images = Counter("featurebank_images", "Images answered, by where the vector came from",
                              ["source"], registry=self.registry)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)

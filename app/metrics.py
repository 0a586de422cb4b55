"""Prometheus metrics: requests and latency per endpoint, encode and search time apart."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.refusals import REFUSAL_KINDS
from clipsearch.modality import Modality
from clipsearch.search.query import QueryVector
from clipsearch.search.results import Answer

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


BatchCounts = Callable[[], dict[str, tuple[int, int]]]
"""(batches, queries) so far by batching stage; empty until the service is loaded."""


class BatchCollector(Collector):
    """Exports the search service's batch counters; rate(queries) / rate(batches) is the mean batch size."""

    def __init__(self, counts: BatchCounts) -> None:
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        batches = CounterMetricFamily("clipsearch_batches", "Forward passes or searches run, by stage",
                                      labels=["stage"])
        queries = CounterMetricFamily("clipsearch_batched_queries", "Queries those batches held, by stage",
                                      labels=["stage"])
        for stage, (batch_count, query_count) in self.counts().items():
            batches.add_metric([stage], batch_count)
            queries.add_metric([stage], query_count)
        yield batches
        yield queries


RefusedWrites = Callable[[], dict[str, tuple[str | None, int | None]]]
"""By collection: why writes are refused now (None: they are not), and the bytes free on its filesystem."""


class WritesCollector(Collector):
    """Exports whether each collection's writes are refused, and why, and the room left: the figures to
    alert on."""

    def __init__(self, refused: RefusedWrites) -> None:
        self.refused = refused

    def collect(self) -> Iterator[Metric]:
        refused = GaugeMetricFamily("clipsearch_writes_refused", "1 while writes are refused, by collection and why "
                                    "(a full disk, an unwritable store, a held lock, …)",
                                    labels=["collection", "reason"])
        free = GaugeMetricFamily("clipsearch_bundle_free_bytes", "Bytes free on the filesystem of each collection's "
                                 "bundle", labels=["collection"])
        for collection, (kind, free_bytes) in self.refused().items():
            for name in REFUSAL_KINDS:
                refused.add_metric([collection, name], 1.0 if kind == name else 0.0)
            if free_bytes is not None:
                free.add_metric([collection], float(free_bytes))
        yield refused
        yield free


class Metrics:
    """One registry per app, so several apps (tests) never share counters."""

    def __init__(self, batch_counts: BatchCounts = dict, refused_writes: RefusedWrites = dict) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(BatchCollector(batch_counts))
        self.registry.register(WritesCollector(refused_writes))
        self.write_refusals = Counter("clipsearch_write_refusals_total", "Writes the filesystem refused, by "
                                      "collection and why", ["collection", "reason"], registry=self.registry)
        self.requests = Counter("clipsearch_http_requests_total", "HTTP requests served",
                                ["method", "endpoint", "status"], registry=self.registry)
        self.key_requests = Counter("clipsearch_key_requests_total", "Requests to routes that need a key, by the "
                                    "key's name ('api-key', 'admin-key', 'anonymous'; 'unknown' for a wrong key) "
                                    "and outcome (allowed, refused, limited)", ["key", "outcome"],
                                    registry=self.registry)
        self.latency = Histogram("clipsearch_http_request_duration_seconds", "HTTP request latency",
                                 ["method", "endpoint"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.encode = Histogram("clipsearch_encode_duration_seconds",
                                "Seconds in the model of the forward pass (the whole batch) that embedded a query "
                                "or a query term, by tower", ["modality"], buckets=_LATENCY_BUCKETS,
                                registry=self.registry)
        self.search = Histogram("clipsearch_search_duration_seconds",
                                "Seconds of the index search (the whole batch) that answered a query, by target",
                                ["target"], buckets=_LATENCY_BUCKETS, registry=self.registry)

    def observe_encodings(self, query: QueryVector) -> None:
        """Record the forward passes that embedded a query: each its whole batch's seconds in the model."""
        for encoding in query.encodings:
            self.encode.labels(encoding.tower.value).observe(encoding.seconds)

    def observe_answer(self, answer: Answer, target: Modality) -> None:
        """Record a searched query: its forward passes, and the seconds its batch's search took."""
        if answer.query is not None:  # a keyword search embeds nothing
            self.observe_encodings(answer.query)
        self.search.labels(target.value).observe(answer.search_s)


class RequestMetricsMiddleware:
    """Counts and times every HTTP request by its route template (/items/{item_id}, not /items/7)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", "unmatched")
            self.metrics.requests.labels(scope["method"], endpoint, str(status)).inc()
            self.metrics.latency.labels(scope["method"], endpoint).observe(time.perf_counter() - started)

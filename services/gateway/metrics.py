"""Prometheus metrics of the gateway, plus job outcomes and queue depths read from Redis.

Job outcomes are counted by the workers into Redis (``JobStore._count_outcome``), so one scrape
of the gateway shows every worker's jobs, whatever the number of worker processes.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from services.common.jobs import DURATION_BUCKETS, JobStore
from services.workers.celery_app import QUEUES

registry = CollectorRegistry()
REQUESTS = Counter(
    "bodyserve_http_requests_total",
    "HTTP requests by route, method and status code.",
    ["route", "method", "status"],
    registry=registry,
)
LATENCY = Histogram(
    "bodyserve_http_request_duration_seconds",
    "HTTP request latency by route.",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=registry,
)
JOBS_SUBMITTED = Counter(
    "bodyserve_jobs_submitted_total",
    "Jobs accepted, by capability.",
    ["capability"],
    registry=registry,
)


class RedisJobCollector(Collector):
    """Job outcomes, durations and queue depths, read from Redis at scrape time."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def collect(self) -> Iterable:
        try:
            raw = self.store.outcome_metrics()
            depths = {q: self.store.redis.llen(q) for q in QUEUES.values()}
        except redis.RedisError:
            return
        jobs = CounterMetricFamily(
            "bodyserve_jobs",
            "Finished jobs by capability and outcome.",
            labels=["capability", "outcome"],
        )
        durations = HistogramMetricFamily(
            "bodyserve_job_duration_seconds",
            "Job run time by capability and outcome.",
            labels=["capability", "outcome"],
        )
        labels_seen = sorted({tuple(k.split("|")[1:3]) for k in raw if k.startswith("count|")})
        for capability, outcome in labels_seen:
            label = f"{capability}|{outcome}"
            count = float(raw.get(f"count|{label}", 0))
            jobs.add_metric([capability, outcome], count)
            buckets = [
                (str(b), float(raw.get(f"bucket|{label}|{b}", 0))) for b in DURATION_BUCKETS
            ] + [("+Inf", count)]
            durations.add_metric(
                [capability, outcome], buckets, sum_value=float(raw.get(f"sum|{label}", 0))
            )
        yield jobs
        yield durations
        depth = GaugeMetricFamily(
            "bodyserve_queue_depth", "Jobs waiting in each queue.", labels=["queue"]
        )
        for queue, value in depths.items():
            depth.add_metric([queue], float(value))
        yield depth

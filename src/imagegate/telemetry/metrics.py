"""Prometheus metrics: what each process records as things happen, and the fleet as the database
sees it, read when ``/metrics`` is scraped.

Recorded where things happen (counters and histograms add up over every process of a ``serve``,
see :mod:`.multiprocess`):

- ``imagegate_requests_total{route,code}`` — by the API's middleware, per route *template*;
- ``imagegate_jobs_total{model,status}``, ``imagegate_job_queue_seconds{model}``,
  ``imagegate_job_run_seconds{model}``, ``imagegate_charged_usd_total{model}`` and
  ``imagegate_gpu_memory_bytes{worker,kind}`` — by the worker when a job ends
  (:func:`record_job_end`);
- ``imagegate_webhook_deliveries_total{outcome}`` — by the deliverer after each attempt;
- ``imagegate_db_statements_total{role}`` — every SQL statement a process sends
  (:func:`count_statements`): the database load of an idle fleet, of polls, of submits.

Read from the database at scrape time (:class:`ClusterCollector`): ``imagegate_queue_depth``,
``imagegate_queue_oldest_age_seconds``, ``imagegate_workers{state}``,
``imagegate_models_loaded{model}``, ``imagegate_webhook_backlog``, ``imagegate_database_up``.

No label ever names a key, a request or a raw path: every label takes a bounded set of values.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from imagegate.billing.money import MICROS_PER_USD
from imagegate.catalog import MODELS
from imagegate.jobs.outbox import PENDING
from imagegate.jobs.queue import Job
from imagegate.jobs.store import JobStore
from imagegate.jobs.workers import WorkerState
from imagegate.telemetry import multiprocess
from imagegate.telemetry.logs import job_context

log = logging.getLogger("imagegate.metrics")
# The line each ended job gets comes from the worker that ended it.
job_log = logging.getLogger("imagegate.worker")

# The *_created series: shared metrics never have them, so a process's own /metrics leaves them out too.
disable_created_metrics()

CONTENT_TYPE = CONTENT_TYPE_LATEST
# The route label of a request that matched no route: its raw path would be a series per probe.
UNMATCHED_ROUTE = "unmatched"
# A worker whose heartbeat is older than the lease: its jobs are about to be re-queued.
STALLED = "stalled"
# A retried webhook attempt leaves its event pending; the metric calls that outcome "retry".
RETRY = "retry"

# Waits range from milliseconds (an idle fleet) to many minutes (a backlog).
QUEUE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
# Runs range from a fraction of a second (an upscale) to hours (LoRA training).
RUN_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400)

REQUESTS = Counter("imagegate_requests", "HTTP requests answered, by route template and status code.", ["route", "code"])
JOBS = Counter("imagegate_jobs", "Jobs that ended, by model and final status.", ["model", "status"])
JOB_QUEUE_SECONDS = Histogram(
    "imagegate_job_queue_seconds", "Seconds from submit to a worker's first start, of jobs that ended.", ["model"], buckets=QUEUE_BUCKETS
)
JOB_RUN_SECONDS = Histogram(
    "imagegate_job_run_seconds", "Seconds from a worker's first start to the end, of jobs that ended.", ["model"], buckets=RUN_BUCKETS
)
CHARGED_USD = Counter("imagegate_charged_usd", "USD charged for jobs that ended COMPLETED or FAILED.", ["model"])
WEBHOOK_DELIVERIES = Counter(
    "imagegate_webhook_deliveries",
    "Webhook delivery attempts by outcome: delivered, retry, failed (given up), dropped (410 Gone or superseded).",
    ["outcome"],
)
GPU_MEMORY = Gauge(
    "imagegate_gpu_memory_bytes",
    "CUDA memory of a worker process after its latest job: allocated by tensors, reserved by the caching allocator.",
    ["worker", "kind"],
    # One series per live worker process; a process that exits takes its own away.
    multiprocess_mode="livesum",
)


DB_STATEMENTS = Counter(
    "imagegate_db_statements",
    "SQL statements sent to the database, by the role of the process that sent them (api, worker).",
    ["role"],
)


def count_statements(store: JobStore, role: str) -> None:
    """Count every statement ``store`` sends (each engine of its database) as ``role``."""
    from sqlalchemy import event

    counter = DB_STATEMENTS.labels(role)
    for engine in store.db.engines():
        event.listen(engine, "before_cursor_execute", lambda *_args: counter.inc())


def record_request(route: str, code: int) -> None:
    REQUESTS.labels(route, str(code)).inc()


def record_job_end(job: Job | None, worker_id: str) -> None:
    """Count a job this worker ended, and log it with its request id and model.

    ``None`` (the lease was lost before the outcome was recorded) counts nothing: the worker that
    ends the job counts it.
    """
    if job is None:
        return
    model = job.model_id
    JOBS.labels(model, job.status.value).inc()
    waited = ran = None
    if job.started_at is not None:
        waited = max(0.0, job.started_at - job.created_at)
        JOB_QUEUE_SECONDS.labels(model).observe(waited)
        if job.completed_at is not None:
            ran = max(0.0, job.completed_at - job.started_at)
            JOB_RUN_SECONDS.labels(model).observe(ran)
    if job.status.charged and job.price_micros > 0:
        CHARGED_USD.labels(model).inc(job.price_micros / MICROS_PER_USD)
    _record_gpu_memory(worker_id)
    with job_context(job.id, model):
        job_log.info("%s %s (waited %s, ran %s)", job.id, job.status.value, _seconds(waited), _seconds(ran))


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def _record_gpu_memory(worker_id: str) -> None:
    # Only a process that already uses CUDA has anything to report; asking would start CUDA.
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return
    devices = range(torch.cuda.device_count())
    GPU_MEMORY.labels(worker_id, "allocated").set(sum(torch.cuda.memory_allocated(d) for d in devices))
    GPU_MEMORY.labels(worker_id, "reserved").set(sum(torch.cuda.memory_reserved(d) for d in devices))


def record_webhook_delivery(state: str) -> None:
    """Count one delivery attempt by the state it left its event in."""
    WEBHOOK_DELIVERIES.labels(RETRY if state == PENDING else state).inc()


class ClusterCollector(Collector):
    """The fleet as the database sees it, read at each scrape: every API process reports the same
    values, so dashboards aggregate them across processes with ``max``, not ``sum``."""

    def __init__(self, store: JobStore, lease_seconds: float) -> None:
        self.store = store
        self.lease_seconds = lease_seconds

    def describe(self) -> Iterable[Metric]:
        return []  # nothing to read when the registry is assembled

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("imagegate_database_up", "1 when the cluster gauges could be read from the database.")
        try:
            queued = {q.model_id: q for q in self.store.jobs.queued_by_model()}
            workers = self.store.workers.list()
            backlog = self.store.outbox.pending_count()
        except Exception as exc:  # a scrape must answer, and say why the cluster gauges are missing
            log.warning("metrics: the database did not answer: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        now = time.time()

        depth = GaugeMetricFamily("imagegate_queue_depth", "Jobs waiting for a worker, by model.", labels=["model"])
        oldest = GaugeMetricFamily(
            "imagegate_queue_oldest_age_seconds", "Age of the oldest waiting job, by model (0 when none waits).", labels=["model"]
        )
        for model in sorted(set(MODELS) | set(queued)):
            entry = queued.get(model)
            depth.add_metric([model], entry.depth if entry else 0)
            oldest.add_metric([model], max(0.0, now - entry.oldest_created_at) if entry else 0.0)
        yield depth
        yield oldest

        states = dict.fromkeys([s.value for s in WorkerState] + [STALLED], 0)
        loaded = dict.fromkeys(MODELS, 0)
        for worker in workers:
            if not worker.live(now, self.lease_seconds):
                states[STALLED] += 1
                continue
            states[worker.state.value] += 1
            for model in worker.loaded:
                loaded[model] = loaded.get(model, 0) + 1
        by_state = GaugeMetricFamily(
            "imagegate_workers", "Registered workers by state; stalled: no heartbeat within the lease.", labels=["state"]
        )
        for state, count in states.items():
            by_state.add_metric([state], count)
        yield by_state
        models_loaded = GaugeMetricFamily("imagegate_models_loaded", "Live workers holding the model in memory.", labels=["model"])
        for model, count in sorted(loaded.items()):
            models_loaded.add_metric([model], count)
        yield models_loaded
        yield GaugeMetricFamily("imagegate_webhook_backlog", "Webhook events waiting to be delivered.", value=backlog)


class _ThisProcess(Collector):
    """This process's own metrics, when it does not share a directory with others."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


def render(*collectors: Collector) -> bytes:
    """The Prometheus text exposition of this process's metrics (all of ``serve``'s processes
    when they share a directory) and of ``collectors``."""
    registry = CollectorRegistry(auto_describe=False)
    if multiprocess.shared():
        from prometheus_client.multiprocess import MultiProcessCollector

        MultiProcessCollector(registry)
    else:
        registry.register(_ThisProcess())
    for collector in collectors:
        registry.register(collector)
    return generate_latest(registry)

"""The worker process: owns the models (and the GPU), talks to the rest only through the store.

One job at a time per worker. A job's outcome is data: the worker maps every failure to a status
here, once — InputError → FAILED (charged, the request's fault, as the seeds define it),
JobCanceledError → CANCELED, anything else → ERROR (not charged) — and goes on with the next job.

The database may go away for a while (a PostgreSQL restart, a failover): the loop, the heartbeat
and the recording of a job's outcome log the error, back off and try again, so a worker outlives
an outage; every write stays fenced by the lease, so a retry can never finish a job twice.

Operator setting ``worker_memory_limit_gb`` (``IMAGEGATE_WORKER_MEMORY_LIMIT_GB``): the most host memory a worker
process may allocate (``RLIMIT_DATA``: heap, thread stacks and other private writable mappings;
shared libraries and mapped weight files do not count, and neither does a GPU's own memory). A
request that needs more fails with an allocation error and ends ERROR, not charged, instead of the
kernel's OOM killer taking the whole worker (or a neighbour) down. Unset or 0: no limit.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from PIL import Image
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from imagegate import __version__
from imagegate.billing.pricing import final_price_for
from imagegate.catalog import MODELS, InputKind, ModelSpec, OutputOptions
from imagegate.config import Settings
from imagegate.engines.base import EngineCall, EngineResult, LoraSpec
from imagegate.exceptions import (
    EngineError,
    InputError,
    JobCanceledError,
    StorageError,
    SystemJobError,
)
from imagegate.jobs.ids import new_token
from imagegate.jobs.status import JobStatus
from imagegate.jobs.store import Job, JobStore
from imagegate.jobs.wakeups import Topic
from imagegate.jobs.workers import WorkerInfo, WorkerState
from imagegate.runtime.devices import pin_to_gpu, worker_device
from imagegate.telemetry.logs import configure_logging, job_context
from imagegate.telemetry.metrics import record_job_end
from imagegate.telemetry.server import start_worker_telemetry

log = logging.getLogger("imagegate.worker")

# Back-off while the database is unreachable.
DB_RETRY_FIRST_SECONDS = 0.2
DB_RETRY_MAX_SECONDS = 5.0
# Back-off after a failure of the loop itself (a bug, a schema problem): unhealthy meanwhile.
LOOP_RETRY_FIRST_SECONDS = 1.0
LOOP_RETRY_MAX_SECONDS = 30.0
# A running job's progress reaches the store (and its watchers) at most this often.
PROGRESS_WRITE_SECONDS = 0.25

# Caught around every database call of the loop, the heartbeat and the outcome; only the errors
# that _db_unavailable() accepts are retried, anything else (a bug) still propagates.
DB_ERRORS: tuple[type[Exception], ...] = (DBAPIError, PoolTimeoutError)


def _db_unavailable(exc: BaseException) -> bool:
    """A lost or refused connection (server restarting, network), a busy SQLite file or an
    exhausted pool: worth waiting for. Constraint violations and SQL errors are not."""
    if isinstance(exc, (OperationalError, InterfaceError, PoolTimeoutError)):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


class _HandBack(JobCanceledError):
    """The job goes back to the queue, not to an end: a shutdown's grace period ran out
    (``shutdown``), or this worker could not confirm its lease for longer than ``lease_seconds``
    (the database was unreachable; the stalled sweep may have queued the job again meanwhile).

    A JobCanceledError because that is what the engine contract lets a step callback raise to stop
    a job: engines pass it through and wrap anything else in EngineError (which would end the job
    ERROR instead of handing it back). The worker catches it before JobCanceledError.
    """

    def __init__(self, *, shutdown: bool) -> None:
        super().__init__("shutdown grace period over" if shutdown else "lease not confirmed")
        self.shutdown = shutdown


@dataclass
class _RunState:
    job: Job
    cancel: bool = False
    abort: bool = False
    lost: bool = False
    progress: float = 0.0
    detail: dict[str, Any] | None = None
    reported: float = -1.0  # the progress last written


class Worker:
    """One worker process's loop. Threads: the loop (claims and runs jobs, one at a time), the
    reporter (heartbeat, progress, the stalled-worker sweep) and the store's wake-up listener."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        *,
        model_ids: list[str] | None = None,
        worker_id: str | None = None,
        gpu: int | None = None,
    ) -> None:
        from imagegate.engines.manager import ModelManager
        from imagegate.media.inputs import InputFetcher
        from imagegate.media.storage import storage_for
        from imagegate.media.uploads import StoredUploads

        self.settings = settings
        self.store = store
        self.model_ids = model_ids
        self.worker_id = worker_id or new_worker_id()
        self.gpu = gpu
        self.device = worker_device(settings.device, gpu)
        self.storage = storage_for(settings)
        self.fetcher = InputFetcher.from_settings(settings)
        self.fetcher.own_inputs = StoredUploads(store, self.storage, settings)
        self.manager = ModelManager(
            device=self.device,
            dtype=settings.dtype,
            memory_budget_bytes=int(settings.memory_budget_gb * 2**30),
            engine_options=settings.engine_options,
        )
        self._safety: Any = None
        self.stopping = threading.Event()
        self._state: _RunState | None = None
        self._wake = threading.Event()
        self._report = threading.Event()
        self._health = WorkerState.STARTING
        self._last_error: str | None = None
        self._unsubscribe: Any = None

    # -- registry and wake-ups ----------------------------------------------------------------------

    def info(self) -> WorkerInfo:
        now = time.time()
        return WorkerInfo(
            id=self.worker_id, host=socket.gethostname(), pid=os.getpid(), device=self.device, gpu=self.gpu,
            version=__version__, models=self.model_ids, loaded=self.loaded_models(), state=self.state,
            current_job=self._state.job.id if self._state else None, last_error=self._last_error,
            started_at=now, heartbeat_at=now,
        )

    @property
    def state(self) -> WorkerState:
        if self._health is WorkerState.UNHEALTHY or self._health is WorkerState.STARTING:
            return self._health
        if self.stopping.is_set():
            return WorkerState.DRAINING
        return WorkerState.BUSY if self._state is not None else WorkerState.IDLE

    def serves(self, model_id: str) -> bool:
        return self.model_ids is None or model_id in self.model_ids

    def loaded_models(self) -> list[str]:
        """The served model ids whose weights this worker holds now (several endpoints may share
        one set of weights)."""
        warm = {(e.engine_key, e.source) for e in self.manager.loaded()}
        return sorted(
            spec.id for spec in MODELS.values() if self.serves(spec.id) and (spec.engine_key, self._source(spec)) in warm
        )

    def _source(self, spec: ModelSpec) -> str:
        return self.settings.model(spec.id).weights or spec.default_weights

    def _on_wakeup(self, topic: str, value: str) -> None:
        # Runs on the listener thread: only set flags.
        if topic == Topic.QUEUED and self.serves(value) or topic == Topic.ANY:
            self._wake.set()
        elif topic == Topic.CANCEL:
            state = self._state
            if state is not None and state.job.id == value:
                state.cancel = True

    def _register(self) -> None:
        delay = DB_RETRY_FIRST_SECONDS
        while not self.stopping.is_set():
            try:
                self.store.workers.register(self.info())
                return
            except DB_ERRORS as exc:
                if not _db_unavailable(exc):
                    raise
                log.warning("could not register (%s); retrying in %.1f s", _short(exc), delay)
                self.stopping.wait(delay)
                delay = min(delay * 2, DB_RETRY_MAX_SECONDS)

    # -- the loop ---------------------------------------------------------------------------------

    def run_forever(self) -> None:
        """Claim and run jobs until asked to stop. A failure of the loop itself (not of a job) is
        logged, reported in the registry (state ``unhealthy``) and retried after a back-off that
        grows to LOOP_RETRY_MAX_SECONDS, so it can never become a silent crash loop."""
        log.info("worker %s started on %s (models: %s)", self.worker_id, self.device, self.model_ids or "all")
        self._unsubscribe = self.store.wakeups.subscribe(self._on_wakeup)
        self._register()
        reporter = threading.Thread(target=self._reporter, name="imagegate-worker-reporter", daemon=True)
        reporter.start()
        self._health = WorkerState.IDLE
        failures = 0
        try:
            while not self.stopping.is_set():
                try:
                    if failures:
                        # Back from an outage: heartbeat (registering again if a sweep forgot us)
                        # before claiming, or a sweep could free the job we claim from a worker
                        # that has no registry row yet, and it would run twice. Then hand back
                        # what a claim whose answer was lost left in our name: we run nothing now.
                        self._heartbeat(None)
                        for lost in self.store.jobs.release_held(self.worker_id):
                            log.warning("job %s: claimed while the database went away; handed back to the queue", lost.id)
                    job = self._next_job()
                    if job is not None:
                        self.run_job(job)
                except DB_ERRORS as exc:
                    if not _db_unavailable(exc):
                        failures = self._loop_failed(exc, failures)
                        continue
                    # A claim that committed but whose answer was lost leaves a job owned by this
                    # worker and run by no code: it is handed back once the database answers
                    # (above), or by the stalled sweep if this worker stops first.
                    delay = min(DB_RETRY_FIRST_SECONDS * 2**failures, DB_RETRY_MAX_SECONDS)
                    log.warning("database unavailable (%s); retrying in %.1f s", _short(exc), delay)
                    failures += 1
                    self.stopping.wait(delay)
                    continue
                except Exception as exc:
                    failures = self._loop_failed(exc, failures)
                    continue
                if failures:
                    log.info("worker %s is healthy again", self.worker_id)
                    failures = 0
                    self._health = WorkerState.IDLE
                    self._last_error = None
                    self._report.set()
        finally:
            self._report.set()
            reporter.join(5)
            if self._unsubscribe:
                self._unsubscribe()
            try:
                self.store.workers.deregister(self.worker_id)
            except DB_ERRORS as exc:
                log.warning("could not deregister (%s); the stalled sweep will", _short(exc))
        log.info("worker %s stopped", self.worker_id)

    def _loop_failed(self, exc: BaseException, failures: int) -> int:
        delay = min(LOOP_RETRY_FIRST_SECONDS * 2**failures, LOOP_RETRY_MAX_SECONDS)
        log.exception("worker %s: its loop failed (%s); unhealthy, retrying in %.1f s", self.worker_id, _short(exc), delay)
        self._health = WorkerState.UNHEALTHY
        self._last_error = _short(exc)
        self._report.set()
        self.stopping.wait(delay)
        return failures + 1

    def _next_job(self) -> Job | None:
        """Claim the next job, or wait for a wake-up (or the fallback poll) and return None."""
        woken = self._wake.is_set()
        self._wake.clear()
        # Woken for a job this worker serves: claim straight away. Otherwise a cheap read first,
        # so idle workers never take a write lock for nothing.
        if woken or self.store.jobs.has_queued(self.model_ids):
            job = self.store.jobs.claim(
                self.worker_id,
                self.model_ids,
                loaded=self.loaded_models(),
                affinity_max_age=self.settings.claim_affinity_seconds,
            )
            if job is not None:
                self._wake.set()  # there may be more: look again right after this one
                return job
        self._wake.wait(self.settings.poll_fallback_seconds)
        return None

    def request_stop(self) -> None:
        """Graceful stop: the running job may finish within the grace period; queued jobs stay."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        self._wake.set()
        state = self._state
        if state is not None:
            def abort_later() -> None:
                if self._state is state:
                    state.abort = True

            timer = threading.Timer(self.settings.shutdown_grace_seconds, abort_later)
            timer.daemon = True
            timer.start()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.request_stop())

    # -- the reporter: heartbeat, progress, sweep --------------------------------------------------

    def _reporter(self) -> None:
        """Heartbeats every ``Settings.heartbeat_interval``, writes progress as it moves (at most every
        PROGRESS_WRITE_SECONDS), runs the stalled-worker sweep every ``lease_seconds``. While the
        database is unreachable the job goes on; past ``lease_seconds`` without a heartbeat its job
        counts as taken over (another worker may hold it by then) and stops at its next step."""
        settings = self.settings
        last_beat = last_progress = last_sweep = time.monotonic()
        confirmed = time.monotonic()
        warned = 0.0
        while True:
            stopping = self.stopping.is_set() and self._state is None
            self._report.wait(min(settings.heartbeat_interval, PROGRESS_WRITE_SECONDS))
            self._report.clear()
            now = time.monotonic()
            state = self._state
            try:
                # A job's first step is written at once (its watchers learn that it moves, however
                # short it is); later ones at most every PROGRESS_WRITE_SECONDS.
                moved = state is not None and state.detail is not None and state.progress != state.reported
                if moved and (state.reported < 0 or now - last_progress >= PROGRESS_WRITE_SECONDS):
                    last_progress = now
                    result = self.store.jobs.progress(state.job.id, self.worker_id, state.progress, state.detail)
                    state.reported = state.progress
                    self._took(state, result)
                    confirmed = now
                if now - last_beat >= settings.heartbeat_interval or stopping:
                    last_beat = now
                    self._heartbeat(state)
                    confirmed = now
                if now - last_sweep >= settings.lease_seconds:
                    last_sweep = now
                    self.store.jobs.recover_stalled(settings.lease_seconds)
            except DB_ERRORS as exc:
                if not _db_unavailable(exc):
                    log.exception("worker %s: reporting failed", self.worker_id)
                elif now - warned >= DB_RETRY_MAX_SECONDS:
                    warned = now
                    log.warning("worker %s: could not heartbeat (%s)", self.worker_id, _short(exc))
                if state is not None and now - confirmed > settings.lease_seconds:
                    state.lost = True
            if stopping:
                return

    def _heartbeat(self, state: _RunState | None) -> None:
        with self.store.db.transaction() as conn:
            alive = self.store.workers.heartbeat(
                self.worker_id,
                state=self.state,
                loaded=self.loaded_models(),
                current_job=state.job.id if state else None,
                last_error=self._last_error,
                conn=conn,
            )
            held = self.store.jobs.holds(state.job.id, self.worker_id, conn) if state else None
        if not alive:
            # Our row was swept (we looked stalled: a long pause, a network cut): come back.
            log.warning("worker %s: its registry row was gone; registering again", self.worker_id)
            self.store.workers.register(self.info())
        if state is not None:
            self._took(state, held)

    @staticmethod
    def _took(state: _RunState, result: bool | None) -> None:
        if result is None:
            state.lost = True
        elif result:
            state.cancel = True

    # -- one job ----------------------------------------------------------------------------------

    def run_job(self, job: Job) -> Job | None:
        with job_context(job.id, job.model_id):
            return self._run_job(job)

    def _run_job(self, job: Job) -> Job | None:
        state = _RunState(job=job)
        self._state = state
        self._report.set()
        try:
            status, output, error, charge = self._execute(job, state)
        except _HandBack as exc:
            self._state = None
            self._hand_back(job, patient=not exc.shutdown)
            return None
        self._state = None
        self._report.set()
        # Also when the lease went unconfirmed after the last step: finish is fenced by ownership,
        # so the result counts only if no other worker has taken the job over meanwhile.
        return self._finish(job, status, output, error, charge)

    def _hand_back(self, job: Job, *, patient: bool) -> None:
        """Put the job back in the queue if this worker still holds it. A patient hand-back waits
        for the database (the job must not stay PROCESSING under a live worker that no longer runs
        it, where the stalled sweep never looks); a shutdown tries once and leaves the rest to
        the sweep, which queues the job again once this worker stops heartbeating."""
        delay = DB_RETRY_FIRST_SECONDS
        while True:
            try:
                if patient:
                    self._heartbeat(None)  # registered again before the next claim (see run_forever)
                if self.store.jobs.release(job.id, self.worker_id):
                    log.warning("job %s: handed back to the queue", job.id)
                else:
                    log.warning("job %s: another worker owns it now; dropping this run", job.id)
                return
            except DB_ERRORS as exc:
                if not _db_unavailable(exc):
                    raise
                if not patient or self.stopping.is_set():
                    log.warning("job %s: could not hand the job back (%s); the stalled sweep will", job.id, _short(exc))
                    return
                log.warning("job %s: could not hand the job back (%s); retrying in %.1f s", job.id, _short(exc), delay)
                time.sleep(delay)
                delay = min(delay * 2, DB_RETRY_MAX_SECONDS)

    def _finish(
        self, job: Job, status: JobStatus, output: dict[str, Any] | None, error: str | None, charge: int | None
    ) -> Job | None:
        """Record the outcome, retrying while the database is unreachable.

        The work is done (outputs stored): losing the outcome to a brief outage would run the job
        again. Retrying is safe because ``finish`` is fenced by ownership: once another worker has
        taken the job over, it returns None and nothing changes.
        """
        delay = DB_RETRY_FIRST_SECONDS
        while True:
            try:
                done = self.store.jobs.finish(job.id, self.worker_id, status, output=output, error=error, charge_micros=charge)
            except DB_ERRORS as exc:
                if not _db_unavailable(exc):
                    raise
                log.warning("job %s: could not record %s (%s); retrying in %.1f s", job.id, status.value, _short(exc), delay)
                time.sleep(delay)
                delay = min(delay * 2, DB_RETRY_MAX_SECONDS)
                continue
            if done is None:
                log.warning("job %s: taken over before its outcome was recorded; another worker owns it now", job.id)
                self._discard_outputs(output)
                return None
            if done.status is not status:
                # A cancel acknowledged while the job ran wins over its outcome (never charged).
                self._discard_outputs(output)
            record_job_end(done, self.worker_id)
            return done

    def _discard_outputs(self, output: dict[str, Any] | None) -> None:
        for item in (output or {}).get("media", []):
            try:
                self.storage.delete(item["key"])
            except Exception:  # an orphaned file is harmless; the retention sweep never sees it
                log.warning("could not delete the unused output %s", item["key"])

    def _execute(self, job: Job, state: _RunState) -> tuple[JobStatus, dict[str, Any] | None, str | None, int | None]:
        spec = MODELS.get(job.model_id)
        if spec is None:
            return JobStatus.ERROR, None, f"Model '{job.model_id}' is not in this server's catalog (not charged)", None
        try:
            started = time.perf_counter()
            with self.fetcher.on_behalf_of(job.key_id):
                inputs = self._fetch_inputs(spec, job.params)
            params = dict(job.params)
            if params.get("seed") is None:
                params["seed"] = random.randint(0, 2**32 - 1)
            call = spec.build_call(params, inputs)

            def on_step(step: int, total: int, *, loss: float | None = None) -> None:
                state.progress = round(step / max(total, 1), 4)
                state.detail = {"step": step, "steps": total} if loss is None else {"step": step, "steps": total, "loss": round(loss, 6)}
                self._report.set()
                if state.abort:
                    raise _HandBack(shutdown=True)
                if state.cancel:
                    raise JobCanceledError("Canceled by the client")
                if state.lost:
                    raise _HandBack(shutdown=False)

            engine_started = time.perf_counter()
            result = self._run_engine(spec, call, on_step)
            engine_ended = time.perf_counter()
            output = self._store_outputs(job, spec, params, result)
            # Where the job's time went inside the worker; the queue benchmark subtracts the
            # engine's share to measure what imagegate adds around a model.
            safety_ms = output["timings"]["safety_ms"]
            output["timings"] = {
                "inputs_ms": round((engine_started - started) * 1000, 3),
                "engine_ms": round((engine_ended - engine_started) * 1000, 3),
                "safety_ms": safety_ms,
                "store_ms": round((time.perf_counter() - engine_ended) * 1000 - safety_ms, 3),
            }
            runtime_price = self.store.models.price_override(spec.id) if spec.final_price is not None else None
            charge = final_price_for(spec, params, result, job.price_micros, self.settings, runtime_price)
            return JobStatus.COMPLETED, output, None, charge
        except _HandBack:
            raise
        except InputError as exc:
            return JobStatus.FAILED, None, str(exc), None
        except JobCanceledError:
            return JobStatus.CANCELED, None, "Canceled by the client", None
        except SystemJobError as exc:
            log.warning("job %s: %s", job.id, exc)
            return JobStatus.ERROR, None, f"{exc} (not charged)", None
        except Exception as exc:  # a bug or an unexpected library failure: still only this job's
            log.exception("job %s failed unexpectedly", job.id)
            return JobStatus.ERROR, None, f"Internal error: {type(exc).__name__}: {exc} (not charged)", None

    def _run_engine(self, spec: ModelSpec, call: EngineCall, on_step: Any) -> EngineResult:
        source = self.settings.model(spec.id).weights or spec.default_weights
        engine = self.manager.get(spec.id, spec.engine_key, source)
        # Diffusion models work on multiples of 16; other sizes are rendered at the nearest
        # such size and resampled to exactly what was asked.
        want = (call.width, call.height) if call.width and call.height else None
        if want and (want[0] % 16 or want[1] % 16):
            call.width, call.height = max(16, round(want[0] / 16) * 16), max(16, round(want[1] / 16) * 16)
        try:
            result = engine(call, on_step)
        except (JobCanceledError, _HandBack, SystemJobError, InputError):
            raise
        except Exception as exc:
            raise EngineError(f"{spec.id}: {type(exc).__name__}: {exc}") from exc
        if want and call.task != "upscale":
            result.images = [im if im.size == want else im.resize(want, Image.Resampling.LANCZOS) for im in result.images]
        return result

    # -- inputs -----------------------------------------------------------------------------------

    def _fetch_inputs(self, spec: ModelSpec, params: dict[str, Any]) -> dict[str, Any]:
        from imagegate.media.codecs import decode_mask

        inputs: dict[str, Any] = {}
        for name, kind in spec.inputs.items():
            value = params.get(name)
            if value is None or value == []:
                continue
            if kind is InputKind.IMAGE:
                inputs[name] = self.fetcher.fetch_image(value, field=name)
            elif kind is InputKind.IMAGES:
                inputs[name] = [self.fetcher.fetch_image(url, field=f"{name}[{i}]") for i, url in enumerate(value)]
            elif kind is InputKind.MASK:
                data = self.fetcher.fetch_bytes(value, field=name)
                inputs[name] = decode_mask(data, field=name, max_pixels=self.settings.max_input_pixels)
            elif kind is InputKind.LORAS:
                inputs[name] = self._fetch_loras(value, name)
            elif kind is InputKind.DATASET:
                inputs[name] = self._fetch_dataset(spec, value, name)
        return inputs

    def _fetch_loras(self, items: list[dict[str, Any]], name: str) -> list[LoraSpec]:
        from imagegate.media.loras import LoraCache

        sources = [(item["path"], f"{name}[{i}].path") for i, item in enumerate(items)]
        paths = LoraCache.from_settings(self.settings).fetch_all(self.fetcher, sources)
        return [LoraSpec(path=str(path), scale=float(item.get("scale", 1.0))) for path, item in zip(paths, items)]

    def _fetch_dataset(self, spec: ModelSpec, url: str, field: str) -> list[Image.Image]:
        from imagegate.catalog.flux2 import MIN_DATASET_IMAGES
        from imagegate.engines.base import LORA_TRAINING_AREA, LORA_TRAINING_MIN_SIDE
        from imagegate.media.datasets import DatasetLimits, read_dataset

        limits = DatasetLimits.from_settings(self.settings, LORA_TRAINING_AREA, LORA_TRAINING_MIN_SIDE)
        data = self.fetcher.fetch_bytes(url, field=field)
        return read_dataset(data, field=field, limits=limits, min_images=MIN_DATASET_IMAGES.get(spec.id, 1))

    # -- outputs ----------------------------------------------------------------------------------

    @property
    def safety(self) -> Any:
        if self._safety is None:
            from imagegate.engines.safety import SafetyChecker

            self._safety = SafetyChecker()
        return self._safety

    def _store_outputs(self, job: Job, spec: ModelSpec, params: dict[str, Any], result: EngineResult) -> dict[str, Any]:
        from imagegate.media.codecs import encode_image

        options: OutputOptions = spec.output(params)
        images = list(result.images)
        nsfw = [False] * len(images)
        safety_started = time.perf_counter()
        if images and options.safety_checker:
            verdicts = self.safety.check(images, options.safety_tolerance, options.tolerance_scale)
            for i, verdict in enumerate(verdicts):
                if verdict.flagged:
                    # A flagged image is never stored: the black image takes its place.
                    images[i] = self.safety.redact(images[i])
                    nsfw[i] = True
        safety_ms = round((time.perf_counter() - safety_started) * 1000, 3)
        token = new_token(18)
        media: list[dict[str, Any]] = []
        try:
            for i, image in enumerate(images):
                encoded = encode_image(image, options.format, options.quality)
                key = f"{token}/{job.id}-{i}.{encoded.extension}"
                self.storage.put(key, encoded.data, encoded.content_type)
                media.append({"key": key, "content_type": encoded.content_type, "width": image.width, "height": image.height})
            for name, data, content_type in result.files:
                key = f"{token}/{job.id}-{name}"
                self.storage.put(key, data, content_type)
                media.append({"key": key, "content_type": content_type})
        except StorageError:
            raise
        except Exception as exc:
            raise StorageError(f"could not store the output: {exc}") from exc
        return {
            "media": media,
            "media_type": media[0]["content_type"] if media else None,
            "seed": params["seed"],
            "has_nsfw_concepts": nsfw,
            "info": result.info,
            "timings": {"safety_ms": safety_ms},
        }


def _short(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def apply_memory_limit(gb: float) -> int | None:
    """Cap this process's allocatable memory at ``gb`` (RLIMIT_DATA); returns the bytes, or None.

    RLIMIT_DATA rather than RLIMIT_AS: address space also counts reservations that use no memory
    (CUDA reserves tens of GB of it, and every allocator arena and thread stack reserves some), so
    it would depend on the machine.
    """
    import resource

    if gb <= 0:
        return None
    limit = int(gb * 2**30)
    _soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    return limit


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{new_token(4)}"


def _migrate_when_reachable(store: JobStore) -> None:
    """Check (and bring up to date) the schema, waiting for the database while it is unreachable:
    a worker started during a database restart waits for it instead of exiting, which would only
    make its supervisor restart it again and again meanwhile."""
    delay = DB_RETRY_FIRST_SECONDS
    while True:
        try:
            store.migrate()
            return
        except DB_ERRORS as exc:
            if not _db_unavailable(exc):
                raise
            log.warning("database unavailable at start (%s); retrying in %.1f s", _short(exc), delay)
            time.sleep(delay)
            delay = min(delay * 2, DB_RETRY_MAX_SECONDS)


def run_worker(
    settings: Settings,
    model_ids: list[str] | None = None,
    *,
    worker_id: str | None = None,
    gpu: int | None = None,
    health_port: int | None = None,
) -> None:
    """Entry point of a worker process (``imagegate worker`` and the server's embedded worker)."""
    pin_to_gpu(gpu)
    configure_logging(settings.log_format)
    limit = apply_memory_limit(settings.worker_memory_limit_gb)
    if limit is not None:
        log.info("worker memory limit: %.2f GB (worker_memory_limit_gb)", limit / 2**30)
    store = JobStore.from_settings(settings)
    _migrate_when_reachable(store)
    if settings.metrics_enabled:
        from imagegate.telemetry.metrics import count_statements

        count_statements(store, "worker")
    worker = Worker(settings, store, model_ids=model_ids, worker_id=worker_id, gpu=gpu)
    stop_telemetry = start_worker_telemetry(settings, store, worker.worker_id, health_port)
    worker.install_signal_handlers()
    worker.run_forever()
    stop_telemetry()
    store.dispose()

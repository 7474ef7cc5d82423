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

import io
import logging
import os
import random
import signal
import socket
import threading
import time
import zipfile
from dataclasses import dataclass
from typing import Any

from PIL import Image
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

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

log = logging.getLogger("imagegate.worker")

MAX_DATASET_IMAGES = 200
RECOVER_EVERY_SECONDS = 1.0
# An idle worker checks for work at least this often: the bound on enqueue-to-start latency.
IDLE_POLL_MAX_SECONDS = 0.02
# Back-off while the database is unreachable.
DB_RETRY_FIRST_SECONDS = 0.2
DB_RETRY_MAX_SECONDS = 5.0

# Caught around every database call of the loop, the heartbeat and the outcome; only the errors
# that _db_unavailable() accepts are retried, anything else (a bug) still propagates.
DB_ERRORS: tuple[type[Exception], ...] = (DBAPIError, PoolTimeoutError)


def _db_unavailable(exc: BaseException) -> bool:
    """A lost or refused connection (server restarting, network), a busy SQLite file or an
    exhausted pool: worth waiting for. Constraint violations and SQL errors are not."""
    if isinstance(exc, (OperationalError, InterfaceError, PoolTimeoutError)):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


class _ShutdownAbort(JobCanceledError):
    """The grace period of a shutdown ran out: the job goes back to the queue, not to an end.

    A JobCanceledError because that is what the engine contract lets a step callback raise to stop
    a job: engines pass it through and wrap anything else in EngineError (which would end the job
    ERROR instead of handing it back). The worker catches it before JobCanceledError.
    """


@dataclass
class _RunState:
    job: Job
    cancel: bool = False
    abort: bool = False
    lost: bool = False
    progress: float = 0.0
    detail: dict[str, Any] | None = None


class Worker:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        *,
        model_ids: list[str] | None = None,
        worker_id: str | None = None,
    ) -> None:
        from imagegate.engines.manager import ModelManager
        from imagegate.media.inputs import InputFetcher
        from imagegate.media.storage import open_storage
        from imagegate.media.uploads import StoredUploads

        self.settings = settings
        self.store = store
        self.model_ids = model_ids
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{new_token(4)}"
        self.storage = open_storage(settings.resolved_storage_url)
        self.fetcher = InputFetcher.from_settings(settings)
        self.fetcher.own_inputs = StoredUploads(store, self.storage, settings)
        self.manager = ModelManager(
            device=settings.device,
            dtype=settings.dtype,
            memory_budget_bytes=int(settings.memory_budget_gb * 2**30),
            engine_options=settings.engine_options,
        )
        self._safety: Any = None
        self.stopping = threading.Event()
        self._state: _RunState | None = None
        self._last_recover = 0.0
        self._idle = settings.worker_poll_interval_s

    # -- the loop ---------------------------------------------------------------------------------

    def run_forever(self) -> None:
        log.info("worker %s started (models: %s)", self.worker_id, self.model_ids or "all")
        self._idle = self.settings.worker_poll_interval_s
        db_retry = DB_RETRY_FIRST_SECONDS
        while not self.stopping.is_set():
            try:
                job = self._next_job()
            except DB_ERRORS as exc:
                if not _db_unavailable(exc):
                    raise
                # A claim that committed but whose answer was lost leaves a job leased to no
                # running code: its lease expires and recover_expired() puts it back.
                log.warning("database unavailable (%s); retrying in %.1f s", _short(exc), db_retry)
                self.stopping.wait(db_retry)
                db_retry = min(db_retry * 2, DB_RETRY_MAX_SECONDS)
                continue
            db_retry = DB_RETRY_FIRST_SECONDS
            if job is not None:
                self.run_job(job)
        log.info("worker %s stopped", self.worker_id)

    def _next_job(self) -> Job | None:
        """Recover expired leases now and then, and claim the next job (None: idle or lost a race)."""
        now = time.monotonic()
        if now - self._last_recover > RECOVER_EVERY_SECONDS:
            self._last_recover = now
            self.store.jobs.recover_expired()
        if not self.store.jobs.has_queued(self.model_ids):
            self.stopping.wait(self._idle)
            self._idle = min(self._idle * 1.5, IDLE_POLL_MAX_SECONDS)
            return None
        job = self.store.jobs.claim(self.worker_id, self.settings.lease_seconds, self.model_ids)
        if job is not None:
            self._idle = self.settings.worker_poll_interval_s
        return job

    def request_stop(self) -> None:
        """Graceful stop: the running job may finish within the grace period; queued jobs stay."""
        if self.stopping.is_set():
            return
        self.stopping.set()
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

    # -- one job ----------------------------------------------------------------------------------

    def run_job(self, job: Job) -> Job | None:
        state = _RunState(job=job)
        self._state = state
        beat_stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(state, beat_stop), daemon=True)
        beat.start()
        try:
            status, output, error, charge = self._execute(job, state)
        except _ShutdownAbort:
            beat_stop.set()
            beat.join()
            try:
                self.store.jobs.release(job.id, self.worker_id)
            except DB_ERRORS as exc:
                if not _db_unavailable(exc):
                    raise
                # The lease runs out on its own and the job is queued again then.
                log.warning("job %s: could not hand the job back (%s); its lease will expire", job.id, _short(exc))
            self._state = None
            return None
        beat_stop.set()
        beat.join()
        self._state = None
        if state.lost:
            log.warning("job %s: lease lost; another worker owns it now", job.id)
            return None
        return self._finish(job, status, output, error, charge)

    def _finish(
        self, job: Job, status: JobStatus, output: dict[str, Any] | None, error: str | None, charge: int | None
    ) -> Job | None:
        """Record the outcome, retrying while the database is unreachable.

        The work is done (outputs stored): losing the outcome to a brief outage would run the job
        again. Retrying is safe because ``finish`` is fenced by the lease: once another worker has
        taken the job over (our lease expired meanwhile), it returns None and nothing changes.
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
                log.warning("job %s: lease lost before its outcome was recorded; another worker owns it now", job.id)
            return done

    def _heartbeat(self, state: _RunState, stop: threading.Event) -> None:
        # Renewing often keeps cancellation responsive (the flag comes back with each renewal)
        # and keeps a lease short enough that a killed worker's job is retried quickly.
        interval = min(self.settings.lease_seconds / 3.0, 0.25)
        last_progress = -1.0
        failing_since: float | None = None
        last_warning = 0.0
        while not stop.wait(interval):
            progress = state.progress if state.progress != last_progress else None
            try:
                result = self.store.jobs.heartbeat(state.job.id, self.worker_id, self.settings.lease_seconds, progress, state.detail)
            except DB_ERRORS as exc:
                if not _db_unavailable(exc):
                    raise
                # Keep computing: if the database is back before another worker takes the job
                # over, the next renewal succeeds; if not, it answers None and the job stops.
                now = time.monotonic()
                if failing_since is None:
                    failing_since = now
                if now - last_warning >= DB_RETRY_MAX_SECONDS:
                    last_warning = now
                    log.warning("job %s: could not renew the lease (%s)", state.job.id, _short(exc))
                continue
            if failing_since is not None:
                log.info("job %s: lease renewed again after %.1f s", state.job.id, time.monotonic() - failing_since)
                failing_since = None
            if progress is not None:
                last_progress = progress
            if result is None:
                state.lost = True
                return
            state.cancel = state.cancel or result

    def _execute(self, job: Job, state: _RunState) -> tuple[JobStatus, dict[str, Any] | None, str | None, int | None]:
        spec = MODELS.get(job.model_id)
        if spec is None:
            return JobStatus.ERROR, None, f"Model '{job.model_id}' is not in this server's catalog (not charged)", None
        try:
            with self.fetcher.on_behalf_of(job.key_id):
                inputs = self._fetch_inputs(spec, job.params)
            params = dict(job.params)
            if params.get("seed") is None:
                params["seed"] = random.randint(0, 2**32 - 1)
            call = spec.build_call(params, inputs)

            def on_step(step: int, total: int) -> None:
                state.progress = round(step / max(total, 1), 4)
                state.detail = {"step": step, "steps": total}
                if state.abort:
                    raise _ShutdownAbort()
                if state.cancel or state.lost:
                    raise JobCanceledError("Canceled by the client")

            result = self._run_engine(spec, call, on_step)
            output = self._store_outputs(job, spec, params, result)
            charge = final_price_for(spec, params, result, job.price_micros, self.settings)
            return JobStatus.COMPLETED, output, None, charge
        except _ShutdownAbort:
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
        except (JobCanceledError, _ShutdownAbort, SystemJobError, InputError):
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
                inputs[name] = [self._fetch_lora(item, f"{name}[{i}].path") for i, item in enumerate(value)]
            elif kind is InputKind.DATASET:
                inputs[name] = self._fetch_dataset(spec, value, name)
        return inputs

    def _fetch_lora(self, item: dict[str, Any], field: str) -> LoraSpec:
        import hashlib

        data = self.fetcher.fetch_bytes(item["path"], field=field)
        if len(data) < 8 or not data[8:9] == b"{":
            # A safetensors file starts with an 8-byte header length and a JSON header.
            raise InputError(field, "is not a safetensors file")
        digest = hashlib.sha256(data).hexdigest()
        cache = self.settings.data_dir / "loras"
        cache.mkdir(parents=True, exist_ok=True)
        path = cache / f"{digest}.safetensors"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        return LoraSpec(path=str(path), scale=float(item.get("scale", 1.0)))

    def _fetch_dataset(self, spec: ModelSpec, url: str, field: str) -> list[Image.Image]:
        from imagegate.catalog.flux2 import MIN_DATASET_IMAGES
        from imagegate.media.codecs import decode_image

        data = self.fetcher.fetch_bytes(url, field=field)
        images: list[Image.Image] = []
        if data[:4] == b"PK\x03\x04":
            try:
                archive = zipfile.ZipFile(io.BytesIO(data))
                names = [n for n in archive.namelist() if not n.endswith("/") and not n.startswith("__MACOSX")]
            except zipfile.BadZipFile as exc:
                raise InputError(field, "is not a readable zip archive") from exc
            for name in names:
                if not name.lower().endswith((".png", ".jpg", ".jpeg", ".webp")):
                    continue
                if len(images) >= MAX_DATASET_IMAGES:
                    break
                info = archive.getinfo(name)
                if info.file_size > self.settings.max_input_bytes:
                    raise InputError(field, f"{name} is larger than the input size limit")
                images.append(decode_image(archive.read(name), field=f"{field}:{name}", max_pixels=self.settings.max_input_pixels))
        else:
            images.append(decode_image(data, field=field, max_pixels=self.settings.max_input_pixels))
        needed = MIN_DATASET_IMAGES.get(spec.id, 1)
        if len(images) < needed:
            raise InputError(field, f"needs at least {needed} PNG/JPG images, found {len(images)}")
        return images

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
        if images and options.safety_checker:
            verdicts = self.safety.check(images, options.safety_tolerance, options.tolerance_scale)
            for i, verdict in enumerate(verdicts):
                if verdict.flagged:
                    # A flagged image is never stored: the black image takes its place.
                    images[i] = self.safety.redact(images[i])
                    nsfw[i] = True
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


def run_worker(settings: Settings, model_ids: list[str] | None = None) -> None:
    """Entry point of a worker process (``imagegate worker`` and the server's embedded worker)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    limit = apply_memory_limit(settings.worker_memory_limit_gb)
    if limit is not None:
        log.info("worker memory limit: %.2f GB (worker_memory_limit_gb)", limit / 2**30)
    store = JobStore.from_settings(settings)
    store.migrate()
    worker = Worker(settings, store, model_ids=model_ids)
    worker.install_signal_handlers()
    worker.run_forever()
    store.dispose()

"""Table definitions. Migrations under ``migrations/`` create exactly these.

Timestamps are epoch seconds (double precision): portable between SQLite and PostgreSQL,
cheap to compare for leases, formatted as ISO 8601 only at the API edge.
Money columns are integer micro-dollars.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(200), nullable=False, default=""),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("key_prefix", String(16), nullable=False),
    Column("balance_micros", BigInteger, nullable=False, default=0),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("webhook_secret", String(80), nullable=False),
    Column("created_at", Float, nullable=False),
)

ledger = Table(
    "ledger",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("key_id", String(40), ForeignKey("api_keys.id"), nullable=False),
    Column("job_id", String(120), nullable=True),
    Column("kind", String(16), nullable=False),
    Column("amount_micros", BigInteger, nullable=False),
    Column("created_at", Float, nullable=False),
    Index("ix_ledger_key", "key_id"),
    Index("ix_ledger_job", "job_id"),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(120), primary_key=True),
    Column("key_id", String(40), ForeignKey("api_keys.id"), nullable=False),
    Column("model_id", String(80), nullable=False),
    Column("protocol", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("params", JSON, nullable=False),
    Column("price_micros", BigInteger, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("max_attempts", Integer, nullable=False),
    # The worker running the job (its `workers` row): it owns the job while its heartbeat lives.
    Column("lease_owner", String(120), nullable=True),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("progress", Float, nullable=False, default=0.0),
    # What the progress is made of: {"step", "steps"} for a denoising loop, plus "loss" for a trainer.
    Column("progress_detail", JSON, nullable=True),
    Column("error", Text, nullable=True),
    Column("output", JSON, nullable=True),
    Column("webhook_url", Text, nullable=True),
    Column("webhook_mode", String(16), nullable=True),
    Column("webhook_events", JSON, nullable=True),
    Column("idempotency_key", String(200), nullable=True),
    Column("request_hash", String(64), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("started_at", Float, nullable=True),
    Column("completed_at", Float, nullable=True),
    # When the retention sweep deleted the job's output media (media_retention_days).
    Column("media_deleted_at", Float, nullable=True),
    Index("ix_jobs_claim", "status", "created_at"),
    Index("ix_jobs_model_queue", "status", "model_id", "created_at"),
    Index("ix_jobs_key", "key_id", "created_at"),
    Index("ix_jobs_idempotency", "key_id", "idempotency_key", unique=True),
    # The operator's listings: every job newest first, and usage over a range of completions.
    Index("ix_jobs_created", "created_at"),
    Index("ix_jobs_completed", "completed_at"),
)

model_states = Table(
    "model_states",
    metadata,
    Column("model_id", String(80), primary_key=True),
    Column("enabled", Boolean, nullable=False),
    Column("updated_at", Float, nullable=False),
    # The operator's runtime price per image (admin API), over the catalog's and the config's.
    Column("price_micros", BigInteger, nullable=True),
)

webhook_events = Table(
    "webhook_events",
    metadata,
    Column("id", String(64), primary_key=True),  # the webhook-id header: stable across retries
    Column("job_id", String(120), nullable=False),
    Column("key_id", String(40), nullable=False),
    Column("target_url", Text, nullable=False),
    Column("event_type", String(32), nullable=False),
    Column("terminal", Boolean, nullable=False),
    # The job as it was at the transition (without its request parameters); the deliverer renders
    # the body from it. ``payload`` holds the rendered body of events recorded before 0003.
    Column("payload", Text, nullable=True),
    Column("job_snapshot", JSON, nullable=True),
    Column("state", String(16), nullable=False),  # pending | delivered | failed | dropped
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", Float, nullable=False),
    Column("deliver_until", Float, nullable=False),
    Column("lease_expires_at", Float, nullable=True),
    Column("last_status_code", Integer, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("delivered_at", Float, nullable=True),
    Index("ix_webhook_events_due", "state", "next_attempt_at"),
    Index("ix_webhook_events_job", "job_id"),
)

webhook_attempts = Table(
    "webhook_attempts",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("event_id", String(64), nullable=False),
    Column("job_id", String(120), nullable=False),
    Column("attempted_at", Float, nullable=False),
    Column("status_code", Integer, nullable=True),
    Column("error", Text, nullable=True),
    Column("duration_ms", Float, nullable=False),
    Index("ix_webhook_attempts_job", "job_id"),
)

workers = Table(
    "workers",
    metadata,
    Column("id", String(120), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("device", String(32), nullable=False),  # what its engines run on: cpu, cuda:0
    Column("gpu", Integer, nullable=True),  # the physical GPU it is pinned to (CUDA_VISIBLE_DEVICES)
    Column("version", String(32), nullable=False),
    Column("models", JSON, nullable=True),  # the model ids it serves; null = every model
    Column("loaded", JSON, nullable=False),  # the model ids it holds in memory now
    Column("state", String(16), nullable=False),  # starting | idle | busy | unhealthy | draining
    Column("current_job", String(120), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
    Index("ix_workers_heartbeat", "heartbeat_at"),
)

# Token buckets of the per-key rate limit, shared by every API process and host.
rate_limits = Table(
    "rate_limits",
    metadata,
    Column("key_id", String(40), primary_key=True),
    Column("tokens", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

# Files a key uploaded (POST /v2/files): usable as inputs by that key until they expire.
uploads = Table(
    "uploads",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("key_id", String(40), ForeignKey("api_keys.id"), nullable=False),
    Column("storage_key", String(255), nullable=False),
    Column("content_type", String(100), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Index("ix_uploads_key", "key_id"),
    Index("ix_uploads_expires", "expires_at"),
)

# Every change made through the admin API or the operator's command line.
audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("actor", String(80), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(200), nullable=True),
    Column("detail", JSON, nullable=True),
    Index("ix_audit_log_at", "at"),
)

# The admin API's bearer token when it is not set in the configuration: only its hash is kept.
admin_tokens = Table(
    "admin_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("token_prefix", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
)

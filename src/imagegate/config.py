"""One settings object for the whole server: a TOML file, ``IMAGEGATE_*`` variables, flags.

Precedence (highest first): command-line flags, environment variables, the TOML file named by
``--config`` (or ``IMAGEGATE_CONFIG``), the defaults below. Nested tables map to
``IMAGEGATE_<TABLE>__<KEY>``.

Everything reads derived values through their properties (``base_url``,
``resolved_database_url``, ``resolved_storage_url``), never the raw optional settings, so an
unset value can never reach code that needs one.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from imagegate.engines.options import EngineOptions, WarmupSize

DEFAULT_PRESIGN_SECONDS = 86400
MAX_PRESIGN_SECONDS = 7 * 86400  # the longest a SigV4 presigned URL may live


LogFormat = Literal["text", "json"]


# An admin token shorter than this is refused at start-up: it guards every key and wallet.
ADMIN_TOKEN_MIN_LENGTH = 16


class ModelSettings(BaseModel):
    """Per-model binding: where the weights come from, and operator overrides."""

    weights: str | None = None  # hub id or local directory; None = the catalog's default hub id
    enabled: bool = True
    price_usd: str | None = None  # overrides the catalog price (flat, per image)


class Settings(BaseSettings):
    # Errors name the setting, never its value: settings carry secrets (the admin token, passwords
    # in database URLs).
    model_config = SettingsConfigDict(
        env_prefix="IMAGEGATE_", env_nested_delimiter="__", extra="ignore", hide_input_in_errors=True
    )

    data_dir: Path = Path(".imagegate")
    database_url: str | None = None  # default: sqlite under data_dir
    storage_url: str | None = None  # default: file:// under data_dir; s3://bucket?endpoint_url=...
    # With S3 storage, media URLs are presigned GET URLs valid this long, unless
    # media_public_base_url names a public origin (a CDN) in front of the bucket.
    s3_presign_seconds: int = Field(default=DEFAULT_PRESIGN_SECONDS, ge=1, le=MAX_PRESIGN_SECONDS)
    media_public_base_url: str | None = None
    # The base of polling_url and media URLs; default: http://{host}:{port} of this server.
    # Read it through ``base_url`` only.
    public_base_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000

    # API processes `imagegate serve` runs on the one listening socket (status polls and submits
    # scale with them; rate limits and caches are shared through the database).
    api_processes: int = Field(default=1, ge=1)
    # Worker processes that `imagegate serve` starts beside the API on a machine without GPUs
    # (0 = none: run `imagegate worker` yourself, on this or other machines).
    embedded_workers: int = Field(default=1, ge=0)
    # GPUs that get one embedded worker each: "all" (every GPU the machine has), a list of indices
    # such as [0, 2], or [] (none: `embedded_workers` CPU workers).
    gpus: Literal["all"] | list[int] = "all"
    # A worker refreshes its registry row this often; one whose row is older than `lease_seconds`
    # is stalled, and its job goes back to the queue (or ends ERROR after `max_attempts`).
    heartbeat_seconds: float = Field(default=5.0, gt=0)
    lease_seconds: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    # Idle workers (and the webhook deliverer) look for work this often without a wake-up.
    poll_fallback_seconds: float = Field(default=5.0, gt=0)
    # Workers prefer jobs of the models they have loaded, unless a job has waited this long.
    claim_affinity_seconds: float = Field(default=30.0, ge=0)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    memory_budget_gb: float = 0.0  # 0 = no limit on warm models
    # Host memory a worker process may allocate (RLIMIT_DATA); past it, the job ends ERROR
    # (out of memory) and the worker goes on. 0 = no limit.
    worker_memory_limit_gb: float = 0.0
    # Engine speed options (imagegate.engines.options.EngineOptions): torch.compile of the
    # transformer, fused QKV projections, fp8 (torchao, compute capability 9.0+), channels-last VAE,
    # TF32, and the sizes ("WxH" or "WxH*BATCH") a compiled engine runs at load.
    torch_compile: bool = False
    fuse_qkv: bool = True
    fp8: bool = False
    channels_last_vae: bool = True
    tf32: bool = True
    warmup_sizes: list[str] = Field(default_factory=lambda: ["1024x1024"])
    shutdown_grace_seconds: float = 60.0

    # "text": human-readable lines; "json": one JSON object per line (imagegate.telemetry.logs).
    log_format: LogFormat = "text"
    # GET /metrics on the API (Prometheus text format); the processes of `serve` share
    # ``metrics_dir`` so that each one's /metrics adds up all of them.
    metrics_enabled: bool = True

    # Synchronous styles: how long a request may wait for its job.
    sync_timeout_seconds: float = 300.0
    batch_wait_seconds: float = 60.0

    rate_limit_per_second: float = 20.0
    rate_limit_burst: int = 40

    # Input fetching.
    allow_private_urls: bool = False
    max_input_bytes: int = 25 * 1024 * 1024
    max_input_pixels: int = 40_000_000
    fetch_timeout_seconds: float = 20.0
    # A training dataset's images together, counted from their headers before any is decoded.
    max_dataset_pixels: int = Field(default=500_000_000, gt=0)
    # Downloaded LoRAs kept under data_dir/loras; past it the least recently used go.
    lora_cache_gb: float = Field(default=2.0, gt=0)

    # Webhooks.
    allow_http_webhooks: bool = False  # http:// to loopback, for development
    webhook_timeout_seconds: float = 10.0
    webhook_retry_hours: float = 25.0
    # Finished deliveries (and their attempt log) are deleted this long after their last attempt;
    # 0 keeps them forever.
    webhook_retention_days: float = Field(default=7.0, ge=0)
    # Output media of completed jobs are deleted this long after completion (their URLs then answer
    # 404); 0 keeps them until the operator deletes them.
    media_retention_days: float = Field(default=0.0, ge=0)

    # Uploaded inputs (POST /v2/files) are usable, and kept, this long.
    upload_ttl_hours: float = Field(default=24.0, gt=0)
    # Event streams (GET /v2/requests/{id}/events) send a keep-alive comment after this much
    # silence, so proxies do not close them.
    events_keepalive_seconds: float = Field(default=15.0, gt=0)
    # The catalog model of an OpenAI-compatible request that names none.
    openai_default_model: str = "flux-dev"
    openai_default_edit_model: str = "flux-dev-i2i"

    default_price_usd: str = "0.01"
    models: dict[str, ModelSettings] = Field(default_factory=dict)

    # The admin API's bearer token (/admin/v1). Unset, a token stored with `imagegate admin token
    # --rotate` is used; with neither, the admin API is off (every /admin route answers 404).
    admin_token: str | None = Field(default=None, min_length=ADMIN_TOKEN_MIN_LENGTH)

    @field_validator("admin_token", mode="before")
    @classmethod
    def _empty_token_is_unset(cls, value: Any) -> Any:
        # IMAGEGATE_ADMIN_TOKEN= (empty) turns the setting off rather than allowing an empty token.
        return None if value == "" else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Keyword arguments win: load_settings passes the file, environment and flags already
        # merged in their order, and a worker process gets its server's resolved settings.
        return (init_settings, env_settings)

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'imagegate.db').resolve()}"

    @property
    def base_url(self) -> str:
        return (self.public_base_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def metrics_dir(self) -> Path:
        return (self.data_dir / "metrics").resolve()

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or f"file://{(self.data_dir / 'media').resolve()}"

    @field_validator("warmup_sizes")
    @classmethod
    def _warmup_sizes_parse(cls, sizes: list[str]) -> list[str]:
        for size in sizes:
            WarmupSize.parse(size)
        return sizes

    @property
    def engine_options(self) -> EngineOptions:
        return EngineOptions(
            compile=self.torch_compile,
            fuse_qkv=self.fuse_qkv,
            fp8=self.fp8,
            channels_last_vae=self.channels_last_vae,
            tf32=self.tf32,
            warmup_sizes=tuple(WarmupSize.parse(size) for size in self.warmup_sizes),
        )

    def model(self, model_id: str) -> ModelSettings:
        return self.models.get(model_id) or ModelSettings()


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def environment_values() -> dict[str, Any]:
    """The settings the ``IMAGEGATE_*`` variables set (nested ones as nested dicts)."""
    from pydantic_settings import EnvSettingsSource

    return EnvSettingsSource(Settings)()


def load_settings(config_file: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """The file (if any), overridden by environment variables, overridden by ``overrides`` (the
    command line's flags; ``None`` means the flag was not given)."""
    path = config_file or os.environ.get("IMAGEGATE_CONFIG")
    values: dict[str, Any] = {}
    if path:
        with open(path, "rb") as fh:
            values = tomllib.load(fh)
        base = Path(path).resolve().parent
        # Relative paths in a config file are relative to the file, not to the cwd.
        if "data_dir" in values and not Path(values["data_dir"]).is_absolute():
            values["data_dir"] = str(base / values["data_dir"])
        for model in values.get("models", {}).values():
            weights = model.get("weights")
            if weights and weights.startswith(("./", "../")):
                model["weights"] = str((base / weights).resolve())
    values = _deep_merge(values, environment_values())
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**values)

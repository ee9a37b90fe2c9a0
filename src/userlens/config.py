"""Configuration: environment variables (USERLENS_*) over an optional TOML file over embedded defaults.

The defaults are the embedded mode used by `make serve`: SQLite, a local folder of buckets as the
object store and in-process workers, all under `data_dir`.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

TB = 1000**4


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="USERLENS_", extra="ignore")

    data_dir: Path = Field(Path(".userlens"), description="Where embedded state lives (SQLite file, local buckets, master key).")
    database_url: str = Field("", description="SQLAlchemy URL; default sqlite:///{data_dir}/userlens.db. PostgreSQL: postgresql+psycopg://...")

    # Object storage: a local folder of buckets, or any S3-compatible endpoint.
    object_store: Literal["local", "s3"] = "local"
    storage_root: Path | None = Field(None, description="Folder of buckets for the local store; default {data_dir}/buckets.")
    s3_endpoint_url: str = ""
    s3_access_key: str = ""
    s3_secret_key: SecretStr = SecretStr("")
    s3_region: str = "us-east-1"
    internal_bucket: str = Field("userlens-internal", description="Bucket holding userlens's own data (vectors, models, results).")
    storage_quota_bytes: int = Field(5 * TB, description="Quota of internal storage per account (NCLUE: 5 TB).")

    # HTTP service
    host: str = "127.0.0.1"
    port: int = 8000
    master_key: SecretStr | None = Field(None, description="Key that derives API secrets; default: generated into {data_dir}/master.key.")
    # Limits (413 / 429 in each family's error body; see README "Security")
    max_request_bytes: int = Field(1024 * 1024, description="Largest request body (JSON, forms) in bytes; larger ones get 413.")
    max_upload_bytes: int = Field(256 * 1024 * 1024, description="Largest AEP batch file upload (one PUT) in bytes: AEP's single-request limit; larger ones get 413.")
    rate_limit_per_second: float = Field(0.0, description="Per-key request rate (NCLUE access key, AEP client id); 0 turns the limit off. Over it: 429.")
    rate_limit_burst: int = Field(20, description="Requests a key may send at once before rate_limit_per_second applies.")

    # Job engine
    workers: int = Field(2, description="In-process worker threads started by `userlens serve` (0: none).")
    worker_nice: int = Field(10, description="Nice value of job threads (Linux), so API requests win the cores over jobs (0: same priority).")
    worker_cores: int | None = Field(None, description="Cores this process's jobs share (default: all; set it when several worker processes share a machine).")
    lease_seconds: float = 30.0
    poll_interval: float = 0.2
    max_attempts: int = 3
    retry_backoff_seconds: float = 2.0

    # Executor of heavy jobs' chunks (jobs/executor.py; README "Scaling out on Ray")
    executor: Literal["local", "ray"] = Field("local", description="local: chunks on the worker's threads; ray: chunks as Ray tasks.")
    ray_address: str = Field("", description="Ray cluster to join (ray://... or host:port; default $RAY_ADDRESS, else a local Ray on 127.0.0.1).")
    ray_num_cpus: int | None = Field(None, description="CPUs of the local Ray a worker starts (default: all).")
    ray_max_retries: int = Field(3, description="Times Ray reruns a chunk whose worker or node died.")

    # Features
    feature_chunk_rows: int = Field(16384, description="Users per streamed chunk (one Parquet part each).")
    feature_chunk_bytes: int = Field(64 * 1024 * 1024, description="Features: input bytes per executor chunk (a file's byte range).")
    fault_slow_chunk_ms: int = Field(0, description="Fault injection: sleep this long after each chunk (tests only).")
    fault_slow_check_ms: int = Field(0, description="Fault injection: every job sleeps this long at each progress/cancel check (tests only).")

    # AEP segment jobs
    segment_chunk_profiles: int = Field(20_000, description="AEP segment jobs: profiles per executor chunk of the evaluation.")

    # AEP delete requests (profile system jobs)
    delete_chunk_rows: int = Field(50000, description="AEP delete requests: rows removed per transaction once the data is retired.")

    nclue_model: str = Field("ul-hash-v2", description="Model of new Features when a request names none (ul-hash-v2, ul-hash-v1 or ul-sem-v1).")

    # Tasks
    task_candidates: str = Field("logreg,mlp", description="Classifiers a Task chooses from by validation AUC: logreg (C grid), mlp; logreg:C pins one C.")

    log_level: str = "INFO"
    log_format: Literal["json", "console"] = "console"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("USERLENS_CONFIG")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)

    @model_validator(mode="after")
    def _derive_paths(self) -> "Settings":
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.data_dir / 'userlens.db').as_posix()}"
        if self.storage_root is None:
            self.storage_root = self.data_dir / "buckets"
        return self

    def safe_dict(self) -> dict[str, Any]:
        """Settings for logs: secrets masked (SecretStr prints as '**********')."""
        return {k: (str(v) if isinstance(v, (SecretStr, Path)) else v) for k, v in self.model_dump().items()}


@lru_cache
def get_settings() -> Settings:
    return Settings()

"""Gateway configuration, all from the environment."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.internal_auth import checked_token


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", populate_by_name=True)

    host: str = Field("127.0.0.1", validation_alias=AliasChoices("GATEWAY_HOST"))
    port: int = Field(8000, validation_alias=AliasChoices("GATEWAY_PORT"))
    cell_url: str = Field("http://127.0.0.1:8001", validation_alias=AliasChoices("CELL_URL"),
                          description="one base URL or several, comma-separated (replicas; calls spread over them)")
    subtype_url: str = Field("http://127.0.0.1:8002", validation_alias=AliasChoices("SUBTYPE_URL"),
                             description="one base URL or several, comma-separated")
    upstream_resolve_s: float = Field(0.0, ge=0, validation_alias=AliasChoices("UPSTREAM_RESOLVE_S"),
                                      description="> 0: resolve the host names in CELL_URL and SUBTYPE_URL to all "
                                                  "their addresses this often, one replica each (a Kubernetes "
                                                  "headless Service); 0: use the URLs as given")
    redis_url: str | None = Field(None, validation_alias=AliasChoices("REDIS_URL"),
                                  description="unset: in-process cache")
    cache_ttl_s: int = Field(7 * 24 * 3600, ge=1, validation_alias=AliasChoices("CACHE_TTL_S"))
    max_images: int = Field(2000, ge=1, validation_alias=AliasChoices("MAX_IMAGES", "GATEWAY_MAX_IMAGES"))
    max_body_bytes: int = Field(1024 * 1024 * 1024, ge=1, validation_alias=AliasChoices("GATEWAY_MAX_BODY_BYTES"))
    max_image_bytes: int = Field(50 * 1024 * 1024, ge=1, validation_alias=AliasChoices("GATEWAY_MAX_IMAGE_BYTES"),
                                 description="one image file (413 above, naming it): the body may hold far more "
                                             "than one cell-service request takes")
    max_uploads_bytes: int = Field(1024 * 1024 * 1024, ge=1, validation_alias=AliasChoices("GATEWAY_MAX_UPLOADS_BYTES"),
                                   description="bytes of uploads held at once, from reading to answer (by "
                                               "Content-Length): another request gets a fast 503 (gateway/admission.py)")
    chunk_size: int = Field(64, ge=1, validation_alias=AliasChoices("CHUNK_SIZE"))
    chunk_concurrency: int = Field(4, ge=1, validation_alias=AliasChoices("CHUNK_CONCURRENCY"))
    chunk_max_bytes: int = Field(32 * 1024 * 1024, ge=1, validation_alias=AliasChoices("CHUNK_MAX_BYTES"),
                                 description="a chunk to the cell service also ends before this many bytes of "
                                             "images (an image larger goes alone), so that CHUNK_CONCURRENCY "
                                             "chunks stay well under the cell service's body and reading limits")
    cell_timeout_s: float = Field(60.0, gt=0, validation_alias=AliasChoices("CELL_TIMEOUT_S"))
    subtype_timeout_s: float = Field(10.0, gt=0, validation_alias=AliasChoices("SUBTYPE_TIMEOUT_S"))
    retry_backoff_s: float = Field(0.2, ge=0, validation_alias=AliasChoices("RETRY_BACKOFF_S"))
    redis_timeout_s: float = Field(0.5, gt=0, validation_alias=AliasChoices("REDIS_TIMEOUT_S"))
    log_level: str = Field("info", validation_alias=AliasChoices("LOG_LEVEL"))
    api_keys: str | None = Field(None, validation_alias=AliasChoices("API_KEYS"),
                                 description="JSON list of key entries (python -m gateway.keys new)")
    api_keys_file: Path | None = Field(None, validation_alias=AliasChoices("API_KEYS_FILE"))
    review_requires_personal_key: bool = Field(
        False, validation_alias=AliasChoices("REVIEW_REQUIRES_PERSONAL_KEY"),
        description="refuse reviews (403) made with a key that names no reviewer, so every sign-off names the "
                    "person who held the key (python -m gateway.keys new --reviewer)")
    rate_limit_per_minute: float = Field(600, gt=0, validation_alias=AliasChoices("RATE_LIMIT_PER_MINUTE"))
    rate_limit_burst: int = Field(60, ge=1, validation_alias=AliasChoices("RATE_LIMIT_BURST"))
    internal_token: str | None = Field(None, validation_alias=AliasChoices("INTERNAL_TOKEN"),
                                       description="sent to the services as X-Internal-Token")
    # an empty INTERNAL_TOKEN would send none, unnoticed: refused at start
    _internal_token = field_validator("internal_token")(checked_token)
    audit_log_path: Path | None = Field(None, validation_alias=AliasChoices("AUDIT_LOG_PATH"),
                                        description="JSON-lines audit file; unset: stderr")
    audit_hmac_key: str | None = Field(None, validation_alias=AliasChoices("AUDIT_HMAC_KEY"),
                                       description="keys the patient-id hash in the audit log; unset: random")
    data_dir: Path = Field(Path("data"), validation_alias=AliasChoices("DATA_DIR"),
                           description="where the default SQLite report store lives (reports.db)")
    database_url: str | None = Field(None, validation_alias=AliasChoices("DATABASE_URL"),
                                     description="sqlite:///path or postgresql://user:pw@host/db; "
                                                 "unset: SQLite under DATA_DIR")
    database_schema: str | None = Field(None, validation_alias=AliasChoices("DATABASE_SCHEMA"),
                                        description="PostgreSQL schema for the tables (created when missing)")
    database_timeout_s: float = Field(5.0, gt=0, validation_alias=AliasChoices("DATABASE_TIMEOUT_S"))
    migrate_on_start: bool = Field(True, validation_alias=AliasChoices("MIGRATE_ON_START"),
                                   description="apply the store's migrations at start (else: python -m "
                                               "gateway.store migrate)")

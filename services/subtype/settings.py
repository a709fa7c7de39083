"""Subtype-service configuration, all from the environment."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.internal_auth import checked_token

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "model"


class SubtypeServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", populate_by_name=True)

    host: str = Field("127.0.0.1", validation_alias=AliasChoices("SUBTYPE_HOST"))
    port: int = Field(8002, validation_alias=AliasChoices("SUBTYPE_PORT"))
    model_dir: Path = Field(DEFAULT_MODEL_DIR, validation_alias=AliasChoices("SUBTYPE_MODEL_DIR"))
    max_batch_items: int = Field(1000, ge=1, validation_alias=AliasChoices("SUBTYPE_MAX_BATCH_ITEMS"))
    max_body_bytes: int = Field(5 * 1024 * 1024, ge=1, validation_alias=AliasChoices("SUBTYPE_MAX_BODY_BYTES"))
    log_level: str = Field("info", validation_alias=AliasChoices("LOG_LEVEL"))
    internal_token: str | None = Field(None, validation_alias=AliasChoices("INTERNAL_TOKEN"),
                                       description="when set, every call but /healthz and /readyz must carry it")

    # an empty INTERNAL_TOKEN would turn the check off unnoticed: refused at start
    _internal_token = field_validator("internal_token")(checked_token)

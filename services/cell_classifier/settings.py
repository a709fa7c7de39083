"""Cell-service configuration, all from the environment."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image
from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.internal_auth import checked_token

# Pillow's own decompression-bomb error (twice its warning limit): a higher CELL_MAX_PIXELS could not be honoured
PILLOW_REFUSES_ABOVE = 2 * Image.MAX_IMAGE_PIXELS

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "model"


class CellServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", populate_by_name=True)

    host: str = Field("127.0.0.1", validation_alias=AliasChoices("CELL_HOST"))
    port: int = Field(8001, validation_alias=AliasChoices("CELL_PORT"))
    model_dir: Path = Field(DEFAULT_MODEL_DIR, validation_alias=AliasChoices("CELL_MODEL_DIR"))
    provider: str = Field("auto", validation_alias=AliasChoices("CELL_PROVIDER"),
                          description="auto (CUDA if available, else CPU), cuda or cpu")
    model_variant: str = Field("auto", validation_alias=AliasChoices("CELL_MODEL_VARIANT"),
                               description="auto (the card's default on CPU: int8 where its accuracy held; float "
                                           "on CUDA), int8 or float")
    workers: int = Field(1, ge=1, le=64, validation_alias=AliasChoices("CELL_WORKERS"),
                         description="service processes sharing the port, each with the model, its own batcher and "
                                     "its share of the threads; the GIL lets one process use about 1.6 of 2 cores "
                                     "with 1-image requests, two use 1.9 (docs/benchmarks.md). Memory grows with each")
    max_batch: int = Field(64, ge=1, validation_alias=AliasChoices("MAX_BATCH", "CELL_MAX_BATCH"))
    max_delay_ms: float = Field(5.0, ge=0, validation_alias=AliasChoices("MAX_DELAY_MS", "CELL_MAX_DELAY_MS"))
    concurrent_batches: int = Field(2, ge=1, validation_alias=AliasChoices("CELL_CONCURRENT_BATCHES"),
                                    description="batches the model may run at once, each in its own thread (like "
                                                "two model instances): the next batch starts while one runs")
    max_queue: int = Field(768, ge=1, validation_alias=AliasChoices("MAX_QUEUE", "CELL_MAX_QUEUE"),
                           description="images admitted (decoding, queued or running) before new requests get "
                                       "503, over all worker processes (each admits its share); bounds the wait "
                                       "(about 2 s at 350 images/s on 2 CPU cores); an idle service still takes "
                                       "one request of up to CELL_MAX_IMAGES")
    max_reading_bytes: int = Field(256 * 1024 * 1024, ge=1, validation_alias=AliasChoices("CELL_MAX_READING_BYTES"),
                                   description="request bodies being read at once, by their Content-Length (a body "
                                               "without one counts as CELL_MAX_BODY_BYTES), over all worker "
                                               "processes (each reads its share): bounds the memory of uploads "
                                               "before admission; a request over it gets 503 + Retry-After before "
                                               "its body is read, but a worker reading no other body takes any one")
    max_images: int = Field(1024, ge=1, validation_alias=AliasChoices("CELL_MAX_IMAGES"))
    max_body_bytes: int = Field(512 * 1024 * 1024, ge=1, validation_alias=AliasChoices("CELL_MAX_BODY_BYTES"))
    max_image_bytes: int = Field(50 * 1024 * 1024, ge=1, validation_alias=AliasChoices("CELL_MAX_IMAGE_BYTES"))
    max_pixels: int = Field(40_000_000, ge=1, le=PILLOW_REFUSES_ABOVE, validation_alias=AliasChoices("CELL_MAX_PIXELS"),
                            description="width x height above which an image is refused (decompression bombs); at "
                                        f"most {PILLOW_REFUSES_ABOVE}, above which Pillow refuses to open any image")
    min_image_side: int = Field(32, ge=1, validation_alias=AliasChoices("CELL_MIN_IMAGE_SIDE"),
                                description="pixels: an image narrower or lower than this is refused as too small to "
                                            "show a cell (single-cell crops are 100-400 px; a thumbnail or an icon "
                                            "would otherwise be labelled as a cell)")
    cores: int = Field(0, ge=0, validation_alias=AliasChoices("CELL_CORES"),
                       description="cores the service may use, shared out among its worker processes for the "
                                   "decoding and onnxruntime threads; 0 = the machine's (Kubernetes: the CPU limit)")
    decode_workers: int = Field(1, ge=1, validation_alias=AliasChoices("CELL_DECODE_WORKERS"),
                                description="decoding threads per worker process; unset: the cores shared out among "
                                            "the worker processes (at least 1 each)")
    inference_threads: int = Field(0, ge=0, validation_alias=AliasChoices("CELL_INFERENCE_THREADS"),
                                   description="onnxruntime intra-op threads per worker process, shared out among "
                                               "its concurrent batches (at least 1 each); 0 = the cores shared out "
                                               "among the worker processes")
    retry_after_s: int = Field(1, ge=1, validation_alias=AliasChoices("CELL_RETRY_AFTER_S"))
    log_level: str = Field("info", validation_alias=AliasChoices("LOG_LEVEL"))
    access_log: bool = Field(False, validation_alias=AliasChoices("CELL_ACCESS_LOG"),
                             description="uvicorn's per-request access log lines; off by default: at hundreds of "
                                         "requests/s one line each cost about a tenth of the event loop's time "
                                         "per request (issue 12); the metrics count requests by outcome and status")
    internal_token: str | None = Field(None, validation_alias=AliasChoices("INTERNAL_TOKEN"),
                                       description="when set, every call but /healthz and /readyz must carry it")

    # an empty INTERNAL_TOKEN would turn the check off unnoticed: refused here, before the app is built
    _internal_token = field_validator("internal_token")(checked_token)

    @model_validator(mode="after")
    def _share_the_cores(self) -> "CellServiceSettings":
        if "decode_workers" not in self.model_fields_set:
            self.decode_workers = self.cores_per_worker()
        return self

    def cores_per_worker(self) -> int:
        return max(1, (self.cores or os.cpu_count() or 1) // self.workers)

    def threads_per_batch(self) -> int:
        """onnxruntime intra-op threads for each of a worker process's concurrent batches."""
        return max(1, (self.inference_threads or self.cores_per_worker()) // self.concurrent_batches)

    def worker_max_queue(self) -> int:
        """The admission limit of one worker process: its share of ``max_queue`` (rounded up)."""
        return -(-self.max_queue // self.workers)

    def worker_max_reading_bytes(self) -> int:
        """The bytes of request bodies one worker process reads at once: its share of ``max_reading_bytes``."""
        return -(-self.max_reading_bytes // self.workers)

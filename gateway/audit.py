"""The audit log: one JSON line per patient request, appended, never rewritten.

Fields: time, request_id, key_id, patient (a keyed HMAC-SHA256 of the patient id, so entries
of one patient can be linked by whoever holds AUDIT_HMAC_KEY, and by nobody else), endpoint,
n_images, prediction, models, outcome (HTTP status); for the report store also report_id, status
and a small ``detail`` (a review's reviewer and number of corrections, an erasure's counts).
No image bytes, raw patient ids or keys.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path


class AuditLog:
    def __init__(self, path: Path | None, hmac_key: str):
        self._key = hmac_key.encode()
        self._lock = threading.Lock()
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._stream = os.fdopen(fd, "a", buffering=1)
        else:
            self._stream = sys.stderr

    def patient_hash(self, patient_id: str) -> str:
        return hmac.new(self._key, patient_id.encode(), hashlib.sha256).hexdigest()[:32]

    def record(self, *, request_id: str, key_id: str | None, patient_id: str | None, endpoint: str,
               outcome: int, n_images: int | None = None, prediction: str | None = None,
               models: dict | None = None, report_id: str | None = None, status: str | None = None,
               detail: dict | None = None) -> None:
        entry = {
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "audit": True,
            "request_id": request_id,
            "key_id": key_id,
            "patient": self.patient_hash(patient_id) if patient_id else None,
            "endpoint": endpoint,
            "n_images": n_images,
            "prediction": prediction,
            "models": {k: f"{v['name']} {v['version']}" for k, v in (models or {}).items() if v},
            "outcome": outcome,
        }
        if report_id is not None:
            entry["report_id"] = report_id
        if status is not None:
            entry["status"] = status
        if detail:
            entry["detail"] = detail
        line = json.dumps(entry, separators=(",", ":"))
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()

    def close(self) -> None:
        if self.path is not None:
            self._stream.close()

"""API keys: salted hashes in configuration, constant-time checks, scopes, per-key rate limits.

A key looks like ``aml_<key id>_<secret>``. The configuration holds only the key id, a random
salt, sha256(salt || secret) and the scopes, as a JSON list (env ``API_KEYS`` or the file
``API_KEYS_FILE``)::

    [{"id": "lab1", "salt": "<hex>", "hash": "<hex>", "scopes": ["classify", "read"]},
     {"id": "ajones", "salt": "<hex>", "hash": "<hex>", "scopes": ["read", "review"], "reviewer": "Dr A. Jones"}]

``python -m gateway.keys new --id lab1 --scopes classify,read`` prints a new key and its entry.
A key with a ``reviewer`` is one person's (personal): a review made with it is signed with that name,
whatever the request says (a different name is refused), so a sign-off names who really held the key.
A key without one is a system's (e.g. a LIS that signs its own users in): its reviews name whoever
the request says, as free text. An entry's other fields are refused at start (a misspelt ``reviewer``
would silently make a personal key shared), except notes in fields starting with ``_``.
Key ids are unique (a presented key is looked up by its id): a rotated key gets a new id (lab1-2),
and configuration with an id twice is refused at start rather than one key silently dropped.
The secret is 256 random bits, so one salted sha256 is enough (no password stretching needed).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import secrets
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

SCOPES = frozenset({"classify", "read", "review", "admin"})
"""classify: upload images; read: reports; review: correct and sign off reports; admin: erase a patient's data."""
KEY_PATTERN = re.compile(r"^aml_([A-Za-z0-9-]{1,32})_([A-Za-z0-9_-]{16,128})$")
_DUMMY_SALT = "00" * 16


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    salt: str
    hash: str
    scopes: frozenset[str]
    reviewer: str | None = None
    """the person this key belongs to (a personal key): the name its reviews are signed with"""


def checked_reviewer(name: object) -> str:
    """A reviewer's name as stored and sent to a LIS: 1-128 printable characters (Unicode NFC), trimmed, at
    least one of them a letter or digit (so that "&&&", which a LIS message would carry as nothing, names nobody)."""
    text = unicodedata.normalize("NFC", name).strip() if isinstance(name, str) else ""
    if (not 1 <= len(text) <= 128 or not text.isprintable()
            or not any(unicodedata.category(c)[0] in "LN" for c in text)):
        raise ValueError("reviewer: a name or staff id of 1-128 printable characters, with a letter or digit")
    return text


def same_name(a: str, b: str) -> bool:
    """Whether two spellings name the same reviewer: compatibility-normalised, case and spacing ignored."""
    def folded(name: str) -> str:
        return " ".join(unicodedata.normalize("NFKC", name).split()).casefold()
    return folded(a) == folded(b)


def hash_secret(secret: str, salt_hex: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt_hex) + secret.encode()).hexdigest()


def new_key(key_id: str, scopes: set[str], reviewer: str | None = None) -> tuple[str, dict]:
    """A fresh key (shown once) and the configuration entry that accepts it; ``reviewer`` makes it
    that person's own key (its reviews are signed with the name)."""
    if not re.fullmatch(r"[A-Za-z0-9-]{1,32}", key_id):
        raise ValueError("key id: 1-32 letters, digits or '-'")
    unknown = set(scopes) - SCOPES
    if unknown or not scopes:
        raise ValueError(f"scopes must be a non-empty subset of {sorted(SCOPES)}")
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_hex(16)
    entry = {"id": key_id, "salt": salt, "hash": hash_secret(secret, salt), "scopes": sorted(scopes)}
    if reviewer is not None:
        entry["reviewer"] = checked_reviewer(reviewer)
    return f"aml_{key_id}_{secret}", entry


class KeyStore:
    def __init__(self, entries: list[dict]):
        self._keys: dict[str, ApiKey] = {}
        for entry in entries:
            if entry["id"] in self._keys:  # only one could ever authenticate: refuse rather than drop one
                raise ValueError(f"key id {entry['id']!r} appears more than once in API_KEYS/API_KEYS_FILE; "
                                 "key ids must be unique: give a rotated key a new id (e.g. "
                                 f"{entry['id']}-2) and remove the old entry once clients use the new key")
            scopes = frozenset(entry["scopes"])
            if not scopes <= SCOPES:
                raise ValueError(f"key {entry['id']}: unknown scopes {sorted(scopes - SCOPES)}")
            bytes.fromhex(entry["salt"]), bytes.fromhex(entry["hash"])  # noqa: B018 - validates hex
            # e.g. "reviwer": the key would silently stop being personal; notes go in fields starting with "_"
            unknown_fields = {f for f in entry if not f.startswith("_")} - {"id", "salt", "hash", "scopes", "reviewer"}
            if unknown_fields:
                raise ValueError(f"key {entry['id']}: unknown fields {sorted(unknown_fields)} (the fields are id, "
                                 "salt, hash, scopes and reviewer; put notes in fields starting with '_')")
            try:
                reviewer = checked_reviewer(entry["reviewer"]) if "reviewer" in entry else None
            except ValueError as exc:
                raise ValueError(f"key {entry['id']}: {exc}") from None
            self._keys[entry["id"]] = ApiKey(entry["id"], entry["salt"], entry["hash"], scopes, reviewer)

    @classmethod
    def from_config(cls, inline: str | None, path: Path | None) -> "KeyStore":
        entries: list[dict] = []
        if inline:
            entries += json.loads(inline)
        if path is not None:
            entries += json.loads(Path(path).read_text())
        return cls(entries)

    def __len__(self) -> int:
        return len(self._keys)

    def authenticate(self, presented: str | None) -> ApiKey | None:
        """The key's record if ``presented`` is valid; the work done is the same for unknown ids."""
        match = KEY_PATTERN.match(presented or "")
        key_id, secret = (match.group(1), match.group(2)) if match else ("", presented or "")
        record = self._keys.get(key_id)
        expected = record.hash if record else hash_secret("", _DUMMY_SALT)
        actual = hash_secret(secret, record.salt if record else _DUMMY_SALT)
        return record if hmac.compare_digest(expected, actual) and record is not None else None


@dataclass
class _Bucket:
    tokens: float
    updated: float = field(default_factory=time.monotonic)


class RateLimiter:
    """Token bucket per key: ``per_minute`` requests a minute on average, bursts up to ``burst``."""

    def __init__(self, per_minute: float, burst: int):
        self.rate = per_minute / 60.0
        self.burst = burst
        self._buckets: dict[str, _Bucket] = {}

    def acquire(self, key_id: str) -> float:
        """0 when allowed, else the seconds to wait before the next request would be."""
        now = time.monotonic()
        bucket = self._buckets.setdefault(key_id, _Bucket(float(self.burst), now))
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate if self.rate > 0 else math.inf

"""API keys for the tests, made fresh per run with the same code as `python -m gateway.keys new`."""

import json

from gateway.security import new_key

CLASSIFY_KEY, CLASSIFY_ENTRY = new_key("tests", {"classify", "read"})
READ_ONLY_KEY, READ_ONLY_ENTRY = new_key("reader", {"read"})
API_KEYS_JSON = json.dumps([CLASSIFY_ENTRY, READ_ONLY_ENTRY])
AUTH = {"Authorization": f"Bearer {CLASSIFY_KEY}"}

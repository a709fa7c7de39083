"""API keys for the tests, made fresh per run with the same code as `python -m gateway.keys new`."""

import json

from gateway.security import new_key

CLASSIFY_KEY, CLASSIFY_ENTRY = new_key("tests", {"classify", "read"})
READ_ONLY_KEY, READ_ONLY_ENTRY = new_key("reader", {"read"})
REVIEW_KEY, REVIEW_ENTRY = new_key("reviewer", {"read", "review"})
ADMIN_KEY, ADMIN_ENTRY = new_key("dpo", {"admin"})
LAB_KEY, LAB_ENTRY = new_key("haematology", {"classify", "read", "review"})
PERSONAL_REVIEWER = "Dr A. Jones"  # the person whose own key PERSONAL_KEY is: its reviews are signed so
PERSONAL_KEY, PERSONAL_ENTRY = new_key("ajones", {"classify", "read", "review"}, reviewer=PERSONAL_REVIEWER)
API_KEYS_JSON = json.dumps([CLASSIFY_ENTRY, READ_ONLY_ENTRY, REVIEW_ENTRY, ADMIN_ENTRY, LAB_ENTRY, PERSONAL_ENTRY])
AUTH = {"Authorization": f"Bearer {CLASSIFY_KEY}"}
REVIEW_AUTH = {"Authorization": f"Bearer {REVIEW_KEY}"}
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}

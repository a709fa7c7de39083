"""python -m gateway.keys new --id lab1 --scopes classify,read
python -m gateway.keys new --id ajones --scopes read,review --reviewer "Dr A. Jones"

Prints a new API key (give it to the client; it is not stored anywhere) and the entry to add
to the gateway's API_KEYS (JSON list) or API_KEYS_FILE. Rotating a key: create one with a new
id (e.g. lab1-2: the gateway refuses to start with an id twice), add its entry, hand out the new
key, then remove the old entry. ``--reviewer`` makes the key one person's: every review made with
it is signed with that name (give each haematologist who signs off reports a key of their own).
"""

from __future__ import annotations

import argparse
import json
import sys

from gateway.security import SCOPES, new_key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.keys", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("new", help="create a key")
    create.add_argument("--id", required=True, help="key id, e.g. the client's name (1-32 letters, digits, -; unique: "
                             "a rotated key gets a new one)")
    create.add_argument("--scopes", default="classify,read", help=f"comma-separated, from {sorted(SCOPES)}")
    create.add_argument("--reviewer", help="the person the key is for (name or staff id, 1-128 characters): "
                                           "its reviews are signed with this name, not one the request gives")
    args = parser.parse_args(argv)
    try:
        key, entry = new_key(args.id, {s.strip() for s in args.scopes.split(",") if s.strip()}, args.reviewer)
    except ValueError as exc:
        parser.error(str(exc))
    print(f"key:   {key}")
    print(f"entry: {json.dumps(entry)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

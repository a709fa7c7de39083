"""API key configuration: a key id names one key. Two entries with the same id (a rotation that reused
the id) are refused at load instead of one silently replacing the other."""

from __future__ import annotations

import json

import pytest

from gateway.security import KeyStore, new_key


def test_duplicate_key_ids_are_refused():
    _, old = new_key("lab1", {"classify", "read"})
    _, rotated = new_key("lab1", {"classify", "read"})
    with pytest.raises(ValueError, match="lab1.*more than once"):
        KeyStore([old, rotated])


def test_duplicate_across_api_keys_and_the_file_is_refused(tmp_path):
    _, inline = new_key("lab1", {"read"})
    _, in_file = new_key("lab1", {"classify"})
    path = tmp_path / "keys.json"
    path.write_text(json.dumps([in_file]))
    with pytest.raises(ValueError, match="lab1"):
        KeyStore.from_config(json.dumps([inline]), path)


def test_rotation_with_a_new_id_keeps_both_keys_valid_until_the_old_entry_goes():
    old_key, old = new_key("lab1", {"classify", "read"})
    new_key_, rotated = new_key("lab1-2", {"classify", "read"})
    keys = KeyStore([old, rotated])
    assert len(keys) == 2
    assert keys.authenticate(old_key).key_id == "lab1" and keys.authenticate(new_key_).key_id == "lab1-2"
    keys = KeyStore([rotated])
    assert keys.authenticate(old_key) is None and keys.authenticate(new_key_).key_id == "lab1-2"

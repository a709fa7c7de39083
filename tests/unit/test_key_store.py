"""API key configuration: a key id names one key. Two entries with the same id (a rotation that reused
the id) are refused at load instead of one silently replacing the other."""

from __future__ import annotations

import json

import pytest

from gateway.keys import main as keys_main
from gateway.security import KeyStore, checked_reviewer, new_key, same_name


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


def test_a_personal_key_carries_its_reviewer_and_a_shared_key_none():
    personal_key, personal = new_key("ajones", {"read", "review"}, reviewer="  Dr A. Jones ")
    shared_key, shared = new_key("lis", {"classify", "read", "review"})
    assert personal["reviewer"] == "Dr A. Jones" and "reviewer" not in shared
    keys = KeyStore([personal, shared])
    assert keys.authenticate(personal_key).reviewer == "Dr A. Jones"
    assert keys.authenticate(shared_key).reviewer is None


@pytest.mark.parametrize("reviewer", ["", "   ", "x" * 129, "Dr\nA", 42, "&&&", "^|~", "\u0301\u0301"])
def test_a_reviewer_that_cannot_name_anyone_is_refused(reviewer):
    with pytest.raises(ValueError, match="reviewer"):
        new_key("ajones", {"review"}, reviewer=reviewer)
    _, entry = new_key("ajones", {"review"})
    with pytest.raises(ValueError, match="key ajones: reviewer"):
        KeyStore([{**entry, "reviewer": reviewer}])


def test_an_unknown_field_is_refused_rather_than_a_personal_key_silently_shared():
    _, entry = new_key("ajones", {"review"})
    with pytest.raises(ValueError, match=r"key ajones: unknown fields \['reviwer'\]"):
        KeyStore([{**entry, "reviwer": "Dr A. Jones"}])
    assert len(KeyStore([{**entry, "_note": "issued 2026-12-07 to the haematology lab"}])) == 1, \
        "notes go in fields starting with '_'"


def test_a_reviewer_name_is_stored_in_one_normal_form_and_matched_loosely():
    decomposed = "Dr Ame\u0301lie Durand"  # e + combining acute, as some keyboards send it
    assert checked_reviewer(f"  {decomposed} ") == "Dr Am\u00e9lie Durand"
    assert same_name("dr  AM\u00c9LIE durand", decomposed) and same_name("Dr \uff21. Jones", "dr a. jones")
    assert not same_name("Dr A. Jones", "Dr A. Jone")


def test_the_keys_command_makes_a_personal_key(capsys):
    assert keys_main(["new", "--id", "ajones", "--scopes", "read,review", "--reviewer", "Dr A. Jones"]) == 0
    lines = capsys.readouterr().out.splitlines()
    key = lines[0].removeprefix("key:").strip()
    entry = json.loads(lines[1].removeprefix("entry:").strip())
    assert entry["reviewer"] == "Dr A. Jones" and entry["scopes"] == ["read", "review"]
    assert KeyStore([entry]).authenticate(key).reviewer == "Dr A. Jones"

"""The `make run` launcher lives at the top level (it starts the gateway and the services)."""

import importlib.util

from tests.helpers.processes import REPO_ROOT


def test_launcher_is_top_level_and_make_run_uses_it():
    from launcher.run_all import main

    assert callable(main)
    assert importlib.util.find_spec("launcher.__main__") is not None
    assert not (REPO_ROOT / "services" / "run_all.py").exists()
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert "\t$(PYTHON) -m launcher\n" in makefile.split("\nrun:", 1)[1].split("\n\n", 1)[0] + "\n"


def test_an_empty_internal_token_is_replaced_and_a_given_one_kept():
    from launcher.run_all import ensure_internal_token

    for empty in ({}, {"INTERNAL_TOKEN": ""}, {"INTERNAL_TOKEN": "  "}):
        ensure_internal_token(empty)
        assert len(empty["INTERNAL_TOKEN"]) >= 24 and empty["INTERNAL_TOKEN"].strip() == empty["INTERNAL_TOKEN"]
    given = {"INTERNAL_TOKEN": "s3cret"}
    ensure_internal_token(given)
    assert given == {"INTERNAL_TOKEN": "s3cret"}

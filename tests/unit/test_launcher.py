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

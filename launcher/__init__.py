"""`make run` / `python -m launcher`: the whole system on localhost (see launcher.run_all)."""

"""python -m launcher: the whole system on localhost, ready-checked; Ctrl-C stops it (see README)."""

import sys

from launcher.run_all import main

sys.exit(main())

"""`python -m live_puppet ...` is the `live-puppet` command (and `run` when no command is given)."""

import sys

from live_puppet.cli import main

sys.exit(main())

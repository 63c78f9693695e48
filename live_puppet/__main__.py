"""`python -m live_puppet ...` is the `live-puppet` command (and `run` when no command is given)."""

import sys

try:
    from live_puppet.cli import main
except KeyboardInterrupt:  # Ctrl-C while starting up: no traceback
    sys.exit(130)

sys.exit(main())

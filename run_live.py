#!/usr/bin/env python
"""Drive a portrait live: `python run_live.py --portrait mona_lisa.jpg` (same as `live-puppet run`)."""

import sys

try:
    from live_puppet.cli import main
except KeyboardInterrupt:  # Ctrl-C while starting up: no traceback
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))

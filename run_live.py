#!/usr/bin/env python
"""Drive a portrait live: `python run_live.py --portrait mona_lisa.jpg` (same as `live-puppet run`)."""

import sys

from live_puppet.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))

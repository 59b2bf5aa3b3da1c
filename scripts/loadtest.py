#!/usr/bin/env python3
"""Run the bundled load tester from a checkout: scripts/loadtest.py URL [options]."""

from __future__ import annotations

import sys

from tornado_echo.loadtest.cli import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m tornado_echo``: the same as the ``tornado-echo`` command."""

from __future__ import annotations

import sys

from tornado_echo.cli import main

sys.exit(main())

"""``python -m tornado_echo``: the same as the ``tornado-echo`` command."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())

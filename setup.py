from __future__ import annotations

import re
from pathlib import Path

from setuptools import find_packages, setup

# tornado_echo.__version__ is the one home of the version: read, not imported (installing
# must not need the dependencies installed).
VERSION = re.search(
    r'^__version__ = "([^"]+)"$',
    (Path(__file__).parent / "tornado_echo" / "__init__.py").read_text(encoding="utf-8"),
    re.MULTILINE,
)
assert VERSION is not None, "tornado_echo/__init__.py must set __version__"

setup(
    name="tornado-echo",
    version=VERSION.group(1),
    description="A production WebSocket echo server on Tornado, with a bundled load tester",
    python_requires=">=3.10",
    packages=find_packages(include=["tornado_echo", "tornado_echo.*"]),
    package_data={
        "tornado_echo.store": ["schema/*/*.sql"],
        "tornado_echo.web.console": ["static/*"],
        # uPlot (MIT, npm "uplot" 1.6.32), inlined into --html reports; licence alongside.
        "tornado_echo.loadtest": ["assets/*"],
    },
    install_requires=[
        # 6.6 is the first with the private names tornado_echo/compat.py uses;
        # CI runs the suite at each lower bound here (.ci/lowest_requirements.py).
        "tornado>=6.6,<7",
        "psycopg2-binary>=2.9.5,<3",
        "prometheus_client>=0.20,<1",
        # The fast engine's HTTP/1.1 listener parses requests with llhttp in C
        # (tornado_echo/http/fast_listener.py), as uvicorn does: Tornado's Python parser
        # was the largest part of a handshake.
        "httptools>=0.6",
        'tomli>=2; python_version < "3.11"',
        # Load tester: uvloop's event loop makes the Python client keep up with a compiled
        # one (measured in benchmarks/loadtest_vs_compiled.py); websockets for its C
        # masking helper (websockets.speedups.apply_mask), the hot spot of every send, and
        # its sans-I/O upgrade-response checks and permessage-deflate.
        'uvloop>=0.19; sys_platform != "win32"',
        "websockets>=12",
    ],
    extras_require={
        # Peers measured by the hand-run benchmarks/, never imported by the package.
        "bench": ["aiohttp>=3.9", "picows>=1.0"],
        "test": [
            "pytest>=8",
            "pytest-tornado>=0.8",
            # pytest-tornado imports pkg_resources, which newer setuptools no longer ship
            # and Python 3.12+ venvs do not include.
            "setuptools<81",
            "mypy>=1.10",
            "ruff>=0.5",
            # Browser tests drive Debian's chromium through its chromedriver (.ci/run).
            "selenium>=4.10",
            # Runs the Autobahn TestSuite's cases (tests/test_autobahn.py, benchmarks/autobahn.py).
            "kosoku>=0.1.0",
            # Property-based fuzzing of handshakes and frames (tests/test_fuzz.py).
            "hypothesis>=6.100",
            # The layering contracts in .importlinter (lint-imports in .ci/run).
            "import-linter>=2.1",
        ],
    },
    entry_points={
        "console_scripts": [
            "tornado-echo=tornado_echo.cli:main",
            "tornado-echo-loadtest=tornado_echo.loadtest.cli:main",
        ],
    },
)

#!/usr/bin/env bash
# Quick start on a fresh Debian or Ubuntu machine, from a checkout of tornado-echo:
# installs Python's venv support if missing, creates .venv with the package and what it
# needs to serve (the test tools come with scripts/test.sh), then runs the server on its
# embedded defaults (SQLite in ./var, port 8080). Once installed it starts at once.
# Extra arguments go to the server, e.g. scripts/quickstart.sh --port 9000.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/venv.sh
. scripts/venv.sh
ensure_venv ""  # no extra: what serving needs
exec .venv/bin/tornado-echo "$@"

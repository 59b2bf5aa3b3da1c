#!/usr/bin/env bash
# The tests: installs the test tools into .venv when missing (see scripts/venv.sh), then
# runs pytest with any arguments given, e.g. scripts/test.sh -m 'not slow' tests/store.
# They create and drop databases and roles on the PostgreSQL at 127.0.0.1:5432 (user
# postgres; skipped without one; TEST_POSTGRES_DSN names another).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/venv.sh
. scripts/venv.sh
ensure_venv test
exec .venv/bin/python -m pytest "$@"

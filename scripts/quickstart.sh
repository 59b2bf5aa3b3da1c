#!/usr/bin/env bash
# Quick start on a fresh Debian or Ubuntu machine, from a checkout of tornado-echo:
# installs Python's venv support if missing, creates .venv with the package and its test
# tools, then runs the server on its embedded defaults (SQLite in ./var, port 8080).
# Extra arguments go to the server, e.g. scripts/quickstart.sh --port 9000.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  as_root=()
  [ "$(id -u)" -eq 0 ] || as_root=(sudo)
  "${as_root[@]}" apt-get update -qq
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -e '.[test]'
exec .venv/bin/tornado-echo "$@"

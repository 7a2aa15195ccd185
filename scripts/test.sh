#!/usr/bin/env bash
# Lint, then run the whole test suite (installs what it needs: fuse3, a venv, the project with its test extra).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
source "$top/scripts/setup.sh" test
cd "$top"
"$top/.venv/bin/ruff" check client mffs tests scripts
exec "$top/.venv/bin/python" -m pytest -q -p no:cacheprovider "$@"

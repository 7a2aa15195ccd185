#!/usr/bin/env bash
# Shared set-up for scripts/mount.sh and scripts/test.sh: system packages when missing, a venv, the project.
# Usage: source scripts/setup.sh EXTRAS   (EXTRAS e.g. "fuse" or "test")
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
extras=${1:-fuse}

bash "$top/scripts/system-packages.sh"

[[ -x "$top/.venv/bin/python" ]] || python3 -m venv "$top/.venv"
# compat mode: a plain path entry, not an import hook that every Python start would have to load
"$top/.venv/bin/pip" install -q --disable-pip-version-check --config-settings editable_mode=compat -e "$top[$extras]"

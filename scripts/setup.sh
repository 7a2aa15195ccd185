#!/usr/bin/env bash
# Shared set-up for scripts/mount.sh and scripts/test.sh: system packages when missing, a venv, the project.
# Usage: source scripts/setup.sh EXTRAS   (EXTRAS e.g. "fuse" or "test")
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
extras=${1:-fuse}

need_apt=()
command -v fusermount3 >/dev/null 2>&1 || need_apt+=(fuse3)
ldconfig -p 2>/dev/null | grep -q 'libfuse3\.so\.3' || need_apt+=(libfuse3-3)
python3 -m venv --help >/dev/null 2>&1 || need_apt+=(python3-venv)
if ((${#need_apt[@]})); then
  sudo=""; [[ $(id -u) == 0 ]] || sudo="sudo"
  $sudo apt-get update -qq && $sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

[[ -x "$top/.venv/bin/python" ]] || python3 -m venv "$top/.venv"
# compat mode: a plain path entry, not an import hook that every Python start would have to load
"$top/.venv/bin/pip" install -q --disable-pip-version-check --config-settings editable_mode=compat -e "$top[$extras]"

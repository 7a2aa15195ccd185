#!/usr/bin/env bash
# Installs the system packages mffs needs when they are missing (fuse3 and libfuse 3, python3-venv), with
# apt-get as root or through sudo as another user. Sourced by scripts/setup.sh; runs on its own too.
set -euo pipefail

need_apt=()
command -v fusermount3 >/dev/null 2>&1 || need_apt+=(fuse3)
ldconfig -p 2>/dev/null | grep -q 'libfuse3\.so\.3' || need_apt+=(libfuse3-3)
python3 -m venv --help >/dev/null 2>&1 || need_apt+=(python3-venv)
if ((${#need_apt[@]})); then
  as_root=()  # an array, so that `env VAR=... apt-get` is a command with or without sudo in front
  if [[ $(id -u) != 0 ]]; then
    if ! command -v sudo >/dev/null 2>&1; then
      echo "mffs set-up: needs root or sudo to install ${need_apt[*]} (apt-get install ${need_apt[*]})" >&2
      exit 1
    fi
    as_root=(sudo)
  fi
  echo "mffs set-up: installing ${need_apt[*]} with apt-get" >&2
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

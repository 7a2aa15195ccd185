#!/usr/bin/env bash
# Mount your Metaflow runs at ./mnt (or $1). Uses the datastore Metaflow would use from here
# (METAFLOW_DATASTORE_SYSROOT_LOCAL or the nearest .metaflow); when there is none, makes a few demo runs first.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
mnt=${1:-$PWD/mnt}
namespace=()
source "$top/scripts/setup.sh" fuse
if ! "$top/.venv/bin/python" -c "import sys, client.config as c; sys.exit(0 if c.find_local_root() else 1)"; then
  if [[ ! -d "$top/demo/.metaflow" ]]; then
    echo "No .metaflow datastore found from $PWD: making demo runs with real Metaflow in $top/demo"
    "$top/.venv/bin/pip" install -q --disable-pip-version-check "metaflow==2.19.39"
    "$top/.venv/bin/python" "$top/scripts/make_demo_runs.py" "$top/demo"
  fi
  echo "Mounting the demo runs in $top/demo"
  export METAFLOW_DATASTORE_SYSROOT_LOCAL="$top/demo"
  namespace=(--all-namespaces)  # the demo runs belong to two demo users
fi
mkdir -p "$mnt"
"$top/.venv/bin/mffs" mount "${namespace[@]}" "$mnt"
echo "Mounted at $mnt — try: ls $mnt; unmount with: $top/.venv/bin/mffs umount $mnt"
ls "$mnt"

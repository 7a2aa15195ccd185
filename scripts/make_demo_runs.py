#!/usr/bin/env python
"""Make a few real Metaflow runs in DIR/.metaflow, to try mffs without runs of your own:

    .venv/bin/python scripts/make_demo_runs.py ~/mffs-demo
    mffs mount --datastore-root ~/mffs-demo/.metaflow --all-namespaces /mnt/mf

Runs the test flows (tests/flows/): KitchenFlow (branches, retry, nested foreach, @catch, a card, an included
file), HelloFlow twice with different parameters, and FailFlow, whose middle step fails. Takes under a
minute. Needs metaflow installed (`pip install metaflow`). Also leaves DIR/work (the runs' working directory)
and DIR/metaflow-home (an empty Metaflow config home, so your own config does not leak into the demo).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.datastores import run_flow  # noqa: E402


def _default_user() -> str:
    """The user Metaflow would pick from the environment; Metaflow refuses `root`, so fall back to `demo`."""
    for name in ("METAFLOW_USER", "SUDO_USER", "USERNAME", "USER"):
        user = os.environ.get(name)
        if user and user != "root":
            return user
    return "demo"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path, help="where .metaflow is created (or extended)")
    parser.add_argument("--user", default=_default_user(), help="user the runs belong to (default: %(default)s)")
    args = parser.parse_args()
    root_parent = args.directory.expanduser().resolve()
    root_parent.mkdir(parents=True, exist_ok=True)

    runs = [
        ("kitchenflow.py", ["run", "--table", "table.csv", "--tag", "demo"], True),
        ("helloflow.py", ["run", "--lr", "0.1"], True),
        ("helloflow.py", ["run", "--lr", "0.2", "--tag", "demo"], True),
        ("failflow.py", ["run"], False),  # fails on purpose: a failed run to look at
    ]
    for flow_file, flow_args, must_pass in runs:
        run_id = run_flow(flow_file, flow_args, root_parent, user=args.user, check=must_pass)
        print("%-12s %s" % (flow_file, run_id), flush=True)
    print("\nDatastore: %s\nTry: mffs mount --datastore-root %s --all-namespaces MOUNTPOINT"
          % (root_parent / ".metaflow", root_parent / ".metaflow"))


if __name__ == "__main__":
    main()

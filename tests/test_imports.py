"""Import hygiene: `import client` stays light (no boto3/requests/numpy/... until a feature needs them), reading a
local datastore does not pull the S3 or service backends in, and the path tree imports no FUSE binding.

Each check runs in a fresh interpreter, because this test process has long imported everything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parent.parent
# Heavy or optional dependencies the client core must not import at start.
HEAVY_MODULES = ("boto3", "botocore", "requests", "urllib3", "numpy", "pandas", "pyarrow", "metaflow", "mfusepy")
FUSE_BINDINGS = ("mfusepy", "fuse", "fusepy", "refuse", "pyfuse3", "llfuse")


def imported_top_level_modules(code: str, env: Optional[Dict[str, str]] = None) -> List[str]:
    """Run `code` in a fresh interpreter (repo on sys.path) and return the top-level names of sys.modules after."""
    probe = code + "\nimport sys, json\nprint(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("METAFLOW_", "MFFS_"))}
    child_env["PYTHONPATH"] = str(REPO)
    child_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-c", probe], cwd=str(REPO), env=child_env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_client_imports_no_heavy_module() -> None:
    loaded = imported_top_level_modules("import client")
    assert "client" in loaded  # the probe really imported the package
    assert [m for m in HEAVY_MODULES if m in loaded] == []


def test_reading_a_local_datastore_imports_no_backend_library(local_root: Path, manifest: dict) -> None:
    # A whole read path of the local backend: runs, success, artifact values, metadata and logs.
    pathspec = manifest["runs"]["resume"]["pathspec"]
    code = (
        "from client import Flow, Run\n"
        "runs = list(Flow(%r).runs())\n"
        "run = Run(%r)\n"
        "assert run.successful and runs\n"
        "task = run['end'].task\n"
        "assert [a.data for a in task] and task.metadata_dict and task.stdout\n"
    ) % (pathspec.split("/")[0], pathspec)
    loaded = imported_top_level_modules(
        code, env={"USER": "alice", "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(local_root)}
    )
    assert [m for m in HEAVY_MODULES if m in loaded] == []


def test_import_mffs_tree_imports_no_fuse_binding() -> None:
    loaded = imported_top_level_modules("import mffs.tree")
    assert "mffs" in loaded
    assert [m for m in FUSE_BINDINGS if m in loaded] == []


def test_listing_exports_of_library_types_imports_no_library() -> None:
    # A directory listing decides which exports an artifact has from its stored type string; for numpy and pandas
    # types that must not import numpy (0.2 s) or pandas (0.5 s) into the mount's daemon.
    code = (
        "from mffs.exports import export_names\n"
        "names = {t: export_names(\"<class '%s'>\" % t, trusted=False)\n"
        "         for t in ('numpy.ndarray', 'numpy.float64', 'pandas.core.frame.DataFrame', 'pandas.Timestamp')}\n"
        "assert 'value.npy' in names['numpy.ndarray'], names\n"
        "assert names['numpy.float64'] == names['pandas.Timestamp'] == ['value.json'], names\n"
        "assert {'value.csv', 'value.parquet'} <= set(names['pandas.core.frame.DataFrame']), names\n"
    )
    loaded = imported_top_level_modules(code)
    assert [m for m in HEAVY_MODULES if m in loaded] == []

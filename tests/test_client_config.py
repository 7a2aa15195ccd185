"""User detection, namespace defaults and local-root discovery, compared with Metaflow's client.

Each case runs both clients in fresh subprocesses (Metaflow reads METAFLOW_USER and its config files only at
import), ours with `import metaflow` blocked.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import walk

UNSET = None

# name -> (environment changes on top of walk.clean_env (alice, datastore root), config files, working directory)
#   config files: {"home": {...}} -> $METAFLOW_HOME/config.json, {"profile": {...}} -> config_test.json with
#   METAFLOW_PROFILE=test, {"project": {...}} -> <cwd>/.metaflow/config.json in a fresh project directory.
#   cwd: "scratch" (no .metaflow above it), "flow dir" (inside the datastore), "project".
CASES = {
    "USER": ({}, {}, "scratch"),
    "USER=root only": ({"USER": "root"}, {}, "scratch"),
    "no user variables": ({"USER": UNSET}, {}, "scratch"),
    "METAFLOW_USER beats USER=root": ({"USER": "root", "METAFLOW_USER": "carol"}, {}, "scratch"),
    "METAFLOW_USER beats SUDO_USER": ({"METAFLOW_USER": "carol", "SUDO_USER": "dave"}, {}, "scratch"),
    "METAFLOW_USER=root is skipped": ({"METAFLOW_USER": "root"}, {}, "scratch"),
    "SUDO_USER beats USERNAME": ({"SUDO_USER": "dave", "USERNAME": "erin"}, {}, "scratch"),
    "USERNAME beats USER": ({"USERNAME": "erin"}, {}, "scratch"),
    "SUDO_USER=root is skipped": ({"SUDO_USER": "root", "USERNAME": "erin"}, {}, "scratch"),
    "production token": ({"METAFLOW_PRODUCTION_TOKEN": "tok123"}, {}, "scratch"),
    "METAFLOW_USER in global config": ({"USER": "root"}, {"home": {"METAFLOW_USER": "gina"}}, "scratch"),
    "METAFLOW_USER in profile config": ({"USER": "root", "METAFLOW_PROFILE": "test"},
                                        {"profile": {"METAFLOW_USER": "hank"}}, "scratch"),
    "METAFLOW_USER in project config": ({"USER": "root", "METAFLOW_DATASTORE_SYSROOT_LOCAL": UNSET},
                                        {"project": {"METAFLOW_USER": "ivy"}}, "project"),
    "root found upward from cwd": ({"METAFLOW_DATASTORE_SYSROOT_LOCAL": UNSET}, {}, "flow dir"),
    "no .metaflow anywhere": ({"METAFLOW_DATASTORE_SYSROOT_LOCAL": UNSET}, {}, "scratch"),
    "root from global config": ({"METAFLOW_DATASTORE_SYSROOT_LOCAL": UNSET},
                                {"home": {"METAFLOW_DATASTORE_SYSROOT_LOCAL": "<root>"}}, "scratch"),
}


def _environment_view(api: str, case: str, local_root: Path, scratch: Path) -> dict:
    changes, configs, cwd_kind = CASES[case]
    scratch.mkdir(parents=True)
    env = walk.clean_env(local_root, scratch)
    for name, value in changes.items():
        if value is UNSET:
            env.pop(name, None)
        else:
            env[name] = value
    home = Path(env["METAFLOW_HOME"])
    for kind, settings in configs.items():
        text = json.dumps(settings).replace("<root>", str(local_root))
        if kind == "home":
            (home / "config.json").write_text(text)
        elif kind == "profile":
            (home / "config_test.json").write_text(text)
        else:
            (scratch / "project" / ".metaflow").mkdir(parents=True)
            (scratch / "project" / ".metaflow" / "config.json").write_text(text)
    cwd = {"scratch": scratch, "project": scratch / "project",
           "flow dir": local_root / ".metaflow" / "KitchenFlow"}[cwd_kind]
    out = scratch / "environment.json"
    args = ["environment", "--api", api, "--out", str(out)] + (["--block-metaflow"] if api == "client" else [])
    walk.run_walker(args, env, cwd, timeout=120)
    result = json.loads(out.read_text())
    assert result.pop("blocked_imports") == []
    return result


def _without_scratch(view: dict, scratch: Path) -> str:
    """Scratch directories differ between the two runs; compare paths relative to them."""
    return json.dumps(view, sort_keys=True).replace(str(scratch), "<scratch>")


@pytest.mark.parametrize("case", list(CASES))
def test_environment_matches_metaflow(case: str, local_root: Path, tmp_path: Path) -> None:
    theirs = _environment_view("metaflow", case, local_root, tmp_path / "mf")
    ours = _environment_view("client", case, local_root, tmp_path / "ours")
    assert _without_scratch(ours, tmp_path / "ours") == _without_scratch(theirs, tmp_path / "mf")


def test_cases_cover_distinct_outcomes(local_root: Path, tmp_path: Path) -> None:
    """Guards the case list: the user cases must really select different users (and fail without one)."""
    namespaces = {case: _environment_view("metaflow", case, local_root, tmp_path / str(i))["default_namespace"]
                  for i, case in enumerate(["USER", "USER=root only", "METAFLOW_USER in global config",
                                            "production token"])}
    assert namespaces["USER"] == "user:alice"
    assert namespaces["USER=root only"]["error"][0] == "MetaflowUnknownUser"
    assert namespaces["METAFLOW_USER in global config"] == "user:gina"
    assert namespaces["production token"] == "production:tok123"

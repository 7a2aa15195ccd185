"""Settings and discovery exactly as Metaflow resolves them, without importing Metaflow.

A setting X is read from the env var METAFLOW_X, then the nearest project `.metaflow/config.json`, then the
global `$METAFLOW_HOME/config[_$METAFLOW_PROFILE].json`, then the default. Settings of mffs itself use the
MFFS_ prefix and are read from the environment only.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

_TRUE_FALSE = {"0": False, "false": False, "": False, "1": True, "true": True}


def find_local_root(start: Optional[str] = None) -> Optional[str]:
    """The local datastore root (a directory named `.metaflow`), or None when there is none.

    `METAFLOW_DATASTORE_SYSROOT_LOCAL` names the parent of `.metaflow`; otherwise search upward from `start`
    (default: the current directory) like Metaflow does."""
    sysroot = setting("DATASTORE_SYSROOT_LOCAL")
    if sysroot:
        return os.path.join(sysroot, ".metaflow")
    return _nearest_metaflow_dir(start)


def _nearest_metaflow_dir(start: Optional[str] = None) -> Optional[str]:
    """The first `.metaflow` directory in `start` (default: the current directory) or one of its parents."""
    path = os.path.realpath(start or os.getcwd())
    while True:
        candidate = os.path.join(path, ".metaflow")
        if os.path.isdir(candidate):
            return candidate
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def _project_config() -> dict:
    # The project config is found by the upward search only, never through SYSROOT_LOCAL (as in Metaflow).
    root = _nearest_metaflow_dir()
    return _read_json(os.path.join(root, "config.json")) if root else {}


def _global_config() -> dict:
    home = os.environ.get("METAFLOW_HOME", os.path.expanduser("~/.metaflowconfig"))
    profile = os.environ.get("METAFLOW_PROFILE")
    if profile:
        path = os.path.join(home, "config_%s.json" % profile)
        if not os.path.exists(path):
            raise FileNotFoundError("Metaflow profile '%s' not found: %s does not exist" % (profile, path))
        return _read_json(path)
    return _read_json(os.path.join(home, "config.json"))


def setting(name: str, default: Any = None) -> Any:
    """The value of Metaflow setting `name` (without the METAFLOW_ prefix), converted to the default's type."""
    key = "METAFLOW_" + name
    value = os.environ.get(key)
    if value is None:
        for source in (_project_config, _global_config):
            conf = source()
            if key in conf:
                value = conf[key]
                break
    if value is None:
        return default
    if isinstance(default, bool) and isinstance(value, str):
        return _TRUE_FALSE.get(value.strip().lower(), True)
    if isinstance(default, (dict, list)) and isinstance(value, str):
        return json.loads(value)
    if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, str):
        return int(value)
    return value


def mffs_setting(name: str, default: Any) -> Any:
    """An mffs setting from the environment (MFFS_<name>), converted to the default's type."""
    value = os.environ.get("MFFS_" + name)
    if value is None:
        return default
    return type(default)(value)


def username() -> Optional[str]:
    """The user as Metaflow detects it: the METAFLOW_USER setting, else the first of these environment variables
    that is set and is not 'root'."""
    for user in [setting("USER")] + [os.environ.get(var) for var in ("SUDO_USER", "USERNAME", "USER")]:
        if user and user != "root":
            return user
    return None

"""Fixtures for the whole suite: the standard Metaflow datastore (built once, cached on disk) and a clean,
hermetic client state around every test."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.datastores import build_local_datastore, load_manifest

# Environment variables that change which user, namespace, metadata provider or datastore a client picks.
CLIENT_IDENTITY_ENV = (
    "METAFLOW_USER",
    "SUDO_USER",
    "USERNAME",
    "METAFLOW_PRODUCTION_TOKEN",
    "METAFLOW_DEFAULT_METADATA",
    "METAFLOW_DEFAULT_DATASTORE",
    "METAFLOW_SERVICE_URL",
    "METAFLOW_PROFILE",
)

_session_cache_dir = None


def pytest_configure(config: pytest.Config) -> None:
    # Metaflow's client reads METAFLOW_CLIENT_CACHE_PATH at import: give it a private directory for this
    # session, so caches of earlier sessions (and its cache bugs) cannot leak into results.
    global _session_cache_dir
    if "METAFLOW_CLIENT_CACHE_PATH" not in os.environ:
        _session_cache_dir = tempfile.mkdtemp(prefix="mffs-mfcache-")
        os.environ["METAFLOW_CLIENT_CACHE_PATH"] = _session_cache_dir


def pytest_unconfigure(config: pytest.Config) -> None:
    if _session_cache_dir:
        shutil.rmtree(_session_cache_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def local_root() -> Path:
    """Directory holding the standard test datastore's `.metaflow` (see tests/support/datastores.py)."""
    return build_local_datastore()


@pytest.fixture(scope="session")
def manifest(local_root: Path) -> dict:
    """Which run is which scenario in `local_root`: `manifest["runs"]["kitchen"]["pathspec"]` etc."""
    return load_manifest(local_root)


def reset_client_state() -> None:
    """Forget the process-global namespace and metadata provider of both clients (whichever are imported), so
    the next call re-derives them from the environment, and trust pickles again (a Tree distrusts them)."""
    mf_core = sys.modules.get("metaflow.client.core")
    if mf_core is not None:
        mf_core.current_namespace = False
        mf_core.current_metadata = False
        from metaflow.plugins import METADATA_PROVIDERS
        from metaflow.plugins.datastores.local_storage import LocalStorage

        for provider in METADATA_PROVIDERS:
            provider._INFO = None
        LocalStorage.datastore_root = None
    our_context = sys.modules.get("client.context")
    if our_context is not None:
        our_context._namespace = our_context._NOT_SET
        our_context._provider = None
        our_context._trust_pickles = True


@pytest.fixture(autouse=True)
def _clean_client_state() -> Iterator[None]:
    reset_client_state()
    yield
    reset_client_state()


@pytest.fixture
def client_env(monkeypatch: pytest.MonkeyPatch, local_root: Path) -> Path:
    """Environment of user alice with the standard datastore as the local root and no other identity or
    provider settings; returns `local_root`."""
    for name in CLIENT_IDENTITY_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("USER", "alice")
    monkeypatch.setenv("METAFLOW_DATASTORE_SYSROOT_LOCAL", str(local_root))
    reset_client_state()
    return local_root


@pytest.fixture
def mf(client_env: Path):
    """Metaflow's client on the standard datastore (pinned with `metadata()`: Metaflow reads
    METAFLOW_DATASTORE_SYSROOT_LOCAL only when first imported, which may have happened in another test)."""
    import metaflow

    metaflow.metadata("local@%s" % client_env)
    return metaflow


@pytest.fixture
def clients(client_env: Path) -> dict:
    """Both Client API implementations in this process, on the standard datastore, in alice's namespace:
    `{"metaflow": <metaflow module>, "client": <our client package>}`. Metaflow is pinned to the datastore with
    `metadata()` because it reads METAFLOW_DATASTORE_SYSROOT_LOCAL only when first imported."""
    import metaflow

    import client

    for api in (metaflow, client):
        api.metadata("local@%s" % client_env)
    return {"metaflow": metaflow, "client": client}

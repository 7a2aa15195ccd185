"""The client's process-global settings, as in Metaflow: the namespace, the metadata provider and whether pickles
are trusted, with `current_context`/`restore_context` to keep and put back all three at once."""
from __future__ import annotations

import os
from typing import Any, Optional, Tuple

from .cache import CachingProvider
from .config import setting, username
from .exceptions import MetaflowUnknownUser
from .metadata import PROVIDERS, make_provider

_NOT_SET = object()
_namespace: Any = _NOT_SET
_provider: Optional[CachingProvider] = None
_trust_pickles = True


def trust_pickles(trusted: bool) -> bool:
    """Whether artifact values load with the full unpickler (True, the default: Metaflow's behaviour, a pickle may
    run code) or the restricted one (False: allow-listed data types only, see client.unpickle). Every load obeys
    it unless it says otherwise (`DataArtifact.load(trusted=...)`): `.data`, and the internal artifacts behind
    `finished`, `successful`, `exception`, `index`, parent/child tasks and steps. The mount sets False for its
    process unless started with --trust-pickles, since listing a directory must never run a datastore's code."""
    global _trust_pickles
    _trust_pickles = bool(trusted)
    return _trust_pickles


def get_trust_pickles() -> bool:
    return _trust_pickles


def namespace(ns: Optional[str]) -> Optional[str]:
    """Switch to namespace `ns` (a tag, e.g. 'user:alice'); None disables namespace filtering."""
    global _namespace
    _namespace = ns
    return get_namespace()


def get_namespace() -> Optional[str]:
    if _namespace is _NOT_SET:
        default_namespace()
    return _namespace


def default_namespace() -> str:
    """Reset the namespace to the default: 'production:<token>' or 'user:<name>'."""
    global _namespace
    token = os.environ.get("METAFLOW_PRODUCTION_TOKEN")
    if token:
        _namespace = "production:%s" % token
    else:
        user = username()
        if user is None:
            raise MetaflowUnknownUser()
        _namespace = "user:%s" % user
    return _namespace


def metadata(ms: str) -> str:
    """Switch the metadata provider: 'local@/dir', 'service@http://...', a URL or a directory."""
    global _provider
    _provider = CachingProvider(make_provider(ms))
    return get_metadata()


def get_metadata() -> str:
    provider = current_provider()
    return "%s@%s" % (provider.TYPE, provider.info())


def default_metadata() -> str:
    """Reset the provider to the configured default (METAFLOW_DEFAULT_METADATA, else local)."""
    global _provider
    kind = setting("DEFAULT_METADATA", "local")
    _provider = CachingProvider(make_provider(kind if kind in PROVIDERS else "local"))
    return get_metadata()


def current_provider() -> CachingProvider:
    """The metadata provider in effect (the configured default until `metadata()` chooses one)."""
    if _provider is None:
        default_metadata()
    return _provider  # type: ignore[return-value]


def current_context() -> Tuple[Any, Optional[CachingProvider], bool]:
    """The namespace, metadata provider and pickle trust in effect, as they are (unset ones too), to put back later
    with `restore_context`: for a process that serves several datastores in turn (mffs's fsspec filesystems), each
    keeping its provider and caches, while the process's own client settings stay as they were."""
    return _namespace, _provider, _trust_pickles


def restore_context(context: Tuple[Any, Optional[CachingProvider], bool]) -> None:
    global _namespace, _provider, _trust_pickles
    _namespace, _provider, _trust_pickles = context

"""The metadata providers, one module each, and the one table that finds them by kind.

A `metadata()` spec names a provider as '<kind>@<info>' (Metaflow's form: 'local@/dir', 'service@http://...');
`PROVIDERS` maps each kind to a factory that builds the provider from <info>, importing its module only then (the
service's imports requests). Adding a provider: its module (a `base.MetadataProvider` subclass whose `TYPE` is the
kind) and one line in `PROVIDERS`.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable, Dict

from ..config import find_local_root, setting

if TYPE_CHECKING:
    from .base import MetadataProvider


def _local(info: str) -> MetadataProvider:
    """The local datastore in `<info>/.metaflow`; without info, the one Metaflow would use from here."""
    from .local import LocalMetadataProvider

    if not info:
        return LocalMetadataProvider(find_local_root())
    root = os.path.realpath(os.path.join(info, ".metaflow"))
    if not os.path.isdir(root):
        raise ValueError("Could not find directory .metaflow in directory %s" % info)
    return LocalMetadataProvider(root)


def _service(info: str) -> MetadataProvider:
    """The metadata service at URL `info` (checked with a ping); without info, METAFLOW_SERVICE_URL's."""
    from .service import ServiceMetadataProvider  # requests is imported only here

    return ServiceMetadataProvider(info or setting("SERVICE_URL"), ping=bool(info))


#: provider kind -> factory(info)
PROVIDERS: Dict[str, Callable[[str], MetadataProvider]] = {
    "local": _local,
    "service": _service,
}


def make_provider(spec: str) -> MetadataProvider:
    """The provider a `metadata()` spec names: '<kind>@<info>', else a URL (the service) or a directory (local)."""
    kind, _, info = spec.partition("@")
    if kind not in PROVIDERS:
        kind, info = ("service" if spec.startswith("http") else "local"), spec
    return PROVIDERS[kind](info)

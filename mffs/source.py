"""Which datastore and namespace a tree shows: the choice shared by the CLI (`mffs mount|ls|cat`), the fstab form
and the fsspec filesystem.

The client keeps its metadata provider and namespace per process, as Metaflow's does, so a process serves one
source: `select` sets them and returns the namespace argument for `Tree`.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional


class SourceError(ValueError):
    """The source cannot be used; the message is one sentence for the user."""


def select(
    datastore_root: Optional[str] = None,
    metadata: Optional[str] = None,
    namespace: Optional[str] = None,
    all_namespaces: bool = False,
) -> Dict[str, Any]:
    """Point the client at a datastore (`datastore_root`: a `.metaflow` directory or the directory holding it;
    `metadata`: a spec as for `metaflow.metadata()`, e.g. service@URL; neither: Metaflow's own lookup) and check
    that a namespace can be chosen. Returns `{"namespace": ...}` for `Tree` when one was asked for, else `{}`."""
    import client

    if metadata:
        client.metadata(metadata)
    elif datastore_root:
        root = os.path.abspath(os.path.expanduser(datastore_root))
        parent = os.path.dirname(root) if os.path.basename(root) == ".metaflow" else root
        if not os.path.isdir(os.path.join(parent, ".metaflow")):
            raise SourceError("no datastore found: %s has no .metaflow directory" % parent)
        os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = parent
        client.metadata("local@" + parent)
    else:
        kind, _, info = client.get_metadata().partition("@")
        if kind == "local" and not os.path.isdir(os.path.join(info, ".metaflow")):
            raise SourceError(
                "no datastore found: no .metaflow directory at %s (use --datastore-root DIR or --metadata SPEC)"
                % info
            )
    if all_namespaces:
        return {"namespace": None}
    if namespace:
        return {"namespace": namespace}
    try:  # the default namespace is the user's: find out now, not at the first listing
        client.get_namespace()
    except client.MetaflowUnknownUser as exc:
        raise SourceError(
            "cannot tell whose runs to show (no user name: running as root?); set METAFLOW_USER, or pass "
            "--namespace NS or --all-namespaces"
        ) from exc
    return {}

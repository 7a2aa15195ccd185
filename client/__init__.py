"""mffs's client core: Metaflow's Client API, written from scratch and cached.

    from client import Flow, namespace
    run = Flow("MyFlow").latest_successful_run
    print(run.data.accuracy)

Metaflow itself is never imported. Backends: a local datastore with local metadata (the default), S3 (boto3)
and the Metaflow metadata service (requests), each imported only when used.
"""
from .core import (
    DataArtifact,
    Flow,
    Metadata,
    Metaflow,
    MetaflowCode,
    MetaflowData,
    Run,
    Step,
    Task,
    default_metadata,
    default_namespace,
    get_metadata,
    get_namespace,
    metadata,
    namespace,
)
from .exceptions import (
    MetaflowBackendError,
    MetaflowException,
    MetaflowInternalError,
    MetaflowInvalidPathspec,
    MetaflowNamespaceMismatch,
    MetaflowNotFound,
    MetaflowUnknownUser,
)

__all__ = [
    "DataArtifact", "Flow", "Metadata", "Metaflow", "MetaflowCode", "MetaflowData", "Run", "Step", "Task",
    "default_metadata", "default_namespace", "get_metadata", "get_namespace", "metadata", "namespace",
    "MetaflowBackendError", "MetaflowException", "MetaflowInternalError", "MetaflowInvalidPathspec",
    "MetaflowNamespaceMismatch", "MetaflowNotFound", "MetaflowUnknownUser",
]

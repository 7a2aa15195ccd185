"""mffs's client core: Metaflow's Client API, written from scratch and cached.

    from client import Flow, namespace
    run = Flow("MyFlow").latest_successful_run
    print(run.data.accuracy)

Metaflow itself is never imported. Backends: a local datastore with local metadata (the default), S3 (boto3)
and the Metaflow metadata service (requests), each imported only when used.

Pickles are trusted by default, as in Metaflow: `trust_pickles(False)` makes every value load (`.data`, and the
internal artifacts behind `finished`, `exception`, parent tasks, ...) use the restricted unpickler instead.
"""
from .context import (
    default_metadata,
    default_namespace,
    get_metadata,
    get_namespace,
    get_trust_pickles,
    metadata,
    namespace,
    trust_pickles,
)
from .core import DataArtifact, Flow, Metadata, Metaflow, MetaflowCode, MetaflowData, Run, Step, Task
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
    "trust_pickles", "get_trust_pickles",
    "MetaflowBackendError", "MetaflowException", "MetaflowInternalError", "MetaflowInvalidPathspec",
    "MetaflowNamespaceMismatch", "MetaflowNotFound", "MetaflowUnknownUser",
]

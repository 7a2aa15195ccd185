"""Artifact values: loading a stored blob (whole or streamed) with the trusted or restricted unpickler, the bounded
unpickling of small pickles that name few globals (scalars, Metaflow's internal artifacts, IncludeFile
descriptors), and IncludeFile values and sizes read from where the included file lives."""
from __future__ import annotations

import functools
import io
import json
from typing import TYPE_CHECKING, Any, Dict, FrozenSet, Optional, Tuple

from .context import current_provider, get_trust_pickles
from .datastore import FlowDatastore, read_url
from .exceptions import MetaflowInternalError

if TYPE_CHECKING:  # for annotations only: client.artifact imports this module
    from .artifact import DataArtifact

#: artifacts whose serialized size is above this are unpickled from a stream (bytes)
STREAM_THRESHOLD = 16 * 2**20
#: the stored type of an IncludeFile artifact: its blob is a descriptor, the file's bytes live elsewhere
INCLUDED_FILE_TYPE = "<class 'metaflow.includefile.IncludedFile'>"
#: what `DataArtifact.load_scalar` returns for a value it does not load
NOT_A_SCALAR = object()
SCALAR_TYPES = frozenset((int, float, bool, type(None), str, bytes))
#: the opcodes of a protocol 2+ pickle of one scalar: a memo entry, then no more than a few opcodes
SCALAR_OPCODES = frozenset((
    "PROTO", "FRAME", "STOP", "MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT", "NONE", "NEWTRUE", "NEWFALSE",
    "BININT", "BININT1", "BININT2", "LONG1", "LONG4", "BINFLOAT", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8",
    "SHORT_BINBYTES", "BINBYTES", "BINBYTES8",
))
SCALAR_MAX_OPCODES = 8
#: the most serialized bytes `size` reads of an IncludeFile's descriptor (a few hundred in practice)
DESCRIPTOR_LIMIT = 64 << 10


#: the largest pickle of an internal artifact loaded untrusted (a `_graph_info` of hundreds of steps is ~100 KB)
INTERNAL_MAX_BYTES = 1 << 20


def internal_value(artifact: DataArtifact) -> Any:
    """The value of one of Metaflow's internal artifacts (`_task_ok`, `_graph_info`, ...), loaded as
    `trust_pickles()` says. Untrusted, it is read and unpickled within fixed bounds, since these are loaded by
    listings (`finished`, `index`, parents), in the mount's daemon: at most `INTERNAL_MAX_BYTES` read and inflated,
    and no global but Metaflow's stand-ins (its exception wrapper, ForeachFrame), so the pickle can build no more
    than one plain object per opcode. Anything else is an error naming the artifact, not a placeholder that
    `finished` or a graph lookup would take for a value."""
    if get_trust_pickles():
        return artifact.load()
    from . import unpickle

    artifact._check_encoding()
    data = artifact._datastore().small_blob(artifact.sha, INTERNAL_MAX_BYTES)
    if data is None:
        raise MetaflowInternalError("Artifact %s was not loaded: larger than %d bytes, or corrupt"
                                    % (artifact.pathspec, INTERNAL_MAX_BYTES))
    try:
        return loads_naming_only(data, unpickle.METAFLOW_STANDINS)
    except Exception as exc:  # noqa: BLE001 - whatever a hostile pickle raises, it is this artifact's error
        raise MetaflowInternalError("Artifact %s was not loaded: %s" % (artifact.pathspec, exc)) from exc


def load_value(ds: FlowDatastore, sha: str, name: str, trusted: bool) -> Any:
    """The value of artifact `name`, stored as blob `sha` in `ds`, unpickled trusted or not (a large blob from a
    stream); for an IncludeFile, the included file's content."""
    from . import unpickle

    blob = ds.load_blob_or_stream(sha, STREAM_THRESHOLD)
    if isinstance(blob, bytes):
        obj = unpickle.loads(blob, trusted=trusted)
    else:
        with blob:
            obj = unpickle.load(blob, trusted=trusted)
    if isinstance(obj, unpickle.IncludedFile):
        return _included_file_value(obj.descriptor, name)
    return obj


def load_stored(root: str, flow: str, sha: str, name: str, trusted: bool = True) -> Any:
    """The value of artifact `name` stored as blob `sha` of `flow` under datastore `root` (`DataArtifact.stored_at`),
    loaded as `DataArtifact.load(trusted)` loads it: for a process that has no client objects (the mount's sandbox
    workers)."""
    return load_value(FlowDatastore.at(root, flow), sha, name, trusted)


@functools.lru_cache(maxsize=None)
def _naming_only_unpickler() -> type:
    import pickle

    class NamingOnlyUnpickler(pickle.Unpickler):
        """The C unpickler, resolving no global but those in `self.allowed`."""

        allowed: Dict[Tuple[str, str], Any] = {}

        def find_class(self, module: str, name: str) -> Any:
            found = self.allowed.get((module, name))
            if found is None:
                raise pickle.UnpicklingError("names %s.%s" % (module, name))
            return found

    return NamingOnlyUnpickler


def loads_naming_only(data: bytes, allowed: Dict[Tuple[str, str], Any], opcodes: Optional[FrozenSet[str]] = None,
                      max_opcodes: Optional[int] = None) -> Any:
    """Unpickle `data` resolving only the globals in `allowed` ((module, name) -> object); UnpicklingError for
    any other. Without globals to call, a pickle builds at most one object per opcode, so its cost is bounded by
    its length (`load_scalar`, and the descriptor read by `size`, rely on that), but for the memo: the C unpickler
    sizes it by the largest index stored, gigabytes for a 10-byte pickle. So the opcodes are read first
    (pickletools), and a memo index beyond the pickle's length refuses it, as do an opcode not in `opcodes` and
    more than `max_opcodes` opcodes when they are given."""
    import pickle
    import pickletools

    for count, (opcode, argument, _) in enumerate(pickletools.genops(data)):
        if (opcodes is not None and opcode.name not in opcodes) or (max_opcodes is not None and count >= max_opcodes):
            raise pickle.UnpicklingError("opcode %s refused" % opcode.name)
        if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT") and int(argument) > len(data):
            raise pickle.UnpicklingError("memo index %s beyond the pickle" % argument)
    unpickler = _naming_only_unpickler()(io.BytesIO(data))
    unpickler.allowed = allowed
    return unpickler.load()


def included_file_descriptor(data: bytes) -> dict:
    """The descriptor of a pickled IncludedFile, unpickled with nothing but that one class allowed (the pickle is
    read for `size`, in any process, so it must not be able to build anything else)."""
    from . import unpickle

    obj = loads_naming_only(data, {("metaflow.includefile", "IncludedFile"): unpickle.IncludedFile})
    if not isinstance(obj, unpickle.IncludedFile) or not isinstance(obj.descriptor, dict):
        raise MetaflowInternalError("not an IncludeFile descriptor: a %s" % type(obj).__name__)
    return obj.descriptor


def _included_file_value(descriptor: dict, name: str) -> Any:
    kind = descriptor.get("type")
    if kind not in ("uploader-v1", "external", "uploader-v2"):
        raise MetaflowInternalError(
            "Artifact '%s' could not be loaded (IncludedFile) because no handler found: %s"
            % (name, json.dumps(descriptor))
        )
    data = read_url(descriptor["url"], current_provider())
    uploaded = descriptor.get("sub-type") == "uploaded" if kind == "uploader-v2" else kind == "uploader-v1"
    if uploaded:
        import gzip

        data = gzip.decompress(data)
    if descriptor.get("is_text"):
        return io.TextIOWrapper(io.BytesIO(data), encoding=descriptor.get("encoding")).read()
    return data


def included_file_size(descriptor: dict) -> int:
    if descriptor.get("type") == "uploader-v2" and descriptor.get("sub-type") == "uploaded":
        return descriptor["size"]
    return len(read_url(descriptor["url"], current_provider()))

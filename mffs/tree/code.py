"""code/: a run's code package as a read-only directory of its user files (links, absolute names and `..`
components are never served)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from .nodes import BytesReader, Dir, File, Node, Reader, client_errors, join

if TYPE_CHECKING:
    import tarfile

    from .tree import Tree

CODE_DIR = "code"


def code_member_parts(member: tarfile.TarInfo) -> Optional[Tuple[str, ...]]:
    """The path components under which a code package member is served, or None when it is never served: links
    (symbolic and hard), devices and FIFOs, absolute names and names with a `..` component."""
    if not (member.isreg() or member.isdir()):
        return None
    parts = tuple(part for part in member.name.split("/") if part not in ("", "."))
    if member.name.startswith("/") or ".." in parts or not parts:
        return None
    return parts


class CodeArchive:
    """The directory index of a run's code package: which paths code/ serves and the archive members behind them.

    Served: the members `MetaflowCode.user_members()` lists (what Metaflow's `extract()` extracts) that
    `code_member_parts` accepts. `./` and empty components are dropped; when a path occurs twice the later
    member wins, as extraction would overwrite it; a path that is a directory (explicitly or as the parent of
    another member) is a directory even if a file member has the same name. Only the index is kept here (member
    headers, not the package): file bytes are read from the package through `Tree.read_code_member`.
    """

    def __init__(self, run: Any, code: Any):
        self.run = run
        #: directory path components -> {name: file member, or None for a subdirectory}
        self.dirs: Dict[Tuple[str, ...], Dict[str, Optional[tarfile.TarInfo]]] = {(): {}}
        files = []
        for member in code.user_members():
            parts = code_member_parts(member)
            if parts is None:
                continue
            for depth in range(1, len(parts) if member.isreg() else len(parts) + 1):
                self._add_dir(parts[:depth])
            if member.isreg():
                files.append((parts, member))
        for parts, member in files:
            if parts not in self.dirs:
                self.dirs[parts[:-1]][parts[-1]] = member

    def _add_dir(self, parts: Tuple[str, ...]) -> None:
        if parts not in self.dirs:
            self.dirs[parts] = {}
            self.dirs[parts[:-1]][parts[-1]] = None


class ArchiveFile(File):
    """A regular file of a code package: size from the archive header, bytes read when opened."""

    def __init__(self, tree: "Tree", path: str, archive: CodeArchive, member: tarfile.TarInfo):
        super().__init__(tree, path, float(member.mtime), stable=True)
        self.archive = archive
        self.member = member

    def size(self) -> int:
        return self.member.size

    def open(self) -> Reader:
        data = self.tree.cached_content(self.path)
        if data is None:
            with client_errors(self.path, object_lookup=False):
                data = self.tree.read_code_member(self.archive.run, self.member)
            self.tree.keep_content(self.path, data)
        return BytesReader(data)


class CodeDir(Dir):
    """code/ and its subdirectories: a read-only view of the code package's user files (see CodeArchive)."""

    def __init__(self, tree: "Tree", path: str, mtime: float, archive: CodeArchive, parts: Tuple[str, ...]):
        super().__init__(tree, path, mtime, stable=True)  # a code package never changes
        self.archive = archive
        self.parts = parts

    def _node(self, name: str, member: Optional[tarfile.TarInfo]) -> Node:
        path = join(self.path, name)
        if member is None:
            return CodeDir(self.tree, path, self.mtime, self.archive, self.parts + (name,))
        return ArchiveFile(self.tree, path, self.archive, member)

    def children(self) -> List[Node]:
        return [self._node(name, member) for name, member in sorted(self.archive.dirs[self.parts].items())]

    def child(self, name: str) -> Node:
        entries = self.archive.dirs[self.parts]
        if name not in entries:
            raise self._missing(name)
        return self._node(name, entries[name])
